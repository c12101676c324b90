//! The gate: the first program of a `lifecycle-runc` container with init containers, run in
//! the container by `runc start` once they are done. It reads the supervisor's verdict from
//! `/.lifecycle-runc/verdict`: `go` makes it exec the container's own process (its arguments,
//! found on the container's PATH as runc would), `exit N` makes it exit with status N (a failed
//! init container's), so the engine, which waits for the container's init, sees that status.
//!
//! It runs in any rootfs, even one without a libc: no std, no libc, raw system calls, built
//! static by `build.rs` and embedded in the binary.

#![no_std]
#![no_main]

use core::arch::{asm, global_asm};

const VERDICT: &[u8] = b"/.lifecycle-runc/verdict\0";
const DEFAULT_PATH: &[u8] = b"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const O_RDONLY_CLOEXEC: usize = 0o2000000;
const ENOENT: isize = 2;

#[cfg(target_arch = "x86_64")]
mod sys {
    pub const READ: usize = 0;
    pub const WRITE: usize = 1;
    pub const CLOSE: usize = 3;
    pub const EXECVE: usize = 59;
    pub const EXIT_GROUP: usize = 231;
    pub const OPENAT: usize = 257;
}

#[cfg(target_arch = "aarch64")]
mod sys {
    pub const READ: usize = 63;
    pub const WRITE: usize = 64;
    pub const CLOSE: usize = 57;
    pub const EXECVE: usize = 221;
    pub const EXIT_GROUP: usize = 94;
    pub const OPENAT: usize = 56;
}

const AT_FDCWD: usize = -100isize as usize;

// The kernel starts a process with argc, then argv, a null, envp, a null on the stack.
#[cfg(target_arch = "x86_64")]
global_asm!(
    ".globl _start",
    "_start:",
    "mov rdi, rsp",
    "and rsp, -16",
    "call gate_main",
    "ud2"
);

#[cfg(target_arch = "aarch64")]
global_asm!(".globl _start", "_start:", "mov x0, sp", "bl gate_main", "brk #0");

#[cfg(target_arch = "x86_64")]
unsafe fn syscall(n: usize, a: usize, b: usize, c: usize, d: usize) -> isize {
    let ret: isize;
    asm!("syscall", inlateout("rax") n as isize => ret, in("rdi") a, in("rsi") b, in("rdx") c,
         in("r10") d, lateout("rcx") _, lateout("r11") _, options(nostack));
    ret
}

#[cfg(target_arch = "aarch64")]
unsafe fn syscall(n: usize, a: usize, b: usize, c: usize, d: usize) -> isize {
    let ret: isize;
    asm!("svc 0", inlateout("x0") a as isize => ret, in("x1") b, in("x2") c, in("x3") d,
         in("x8") n, options(nostack));
    ret
}

fn exit(code: usize) -> ! {
    unsafe { syscall(sys::EXIT_GROUP, code, 0, 0, 0) };
    loop {}
}

fn say(parts: &[&[u8]]) {
    for part in parts {
        unsafe { syscall(sys::WRITE, 2, part.as_ptr() as usize, part.len(), 0) };
    }
}

/// A C string's bytes, without its null.
unsafe fn c_str<'a>(p: *const u8) -> &'a [u8] {
    let mut len = 0;
    while *p.add(len) != 0 {
        len += 1;
    }
    core::slice::from_raw_parts(p, len)
}

#[no_mangle]
unsafe extern "C" fn gate_main(sp: *const usize) -> ! {
    let argc = *sp;
    let argv = sp.add(1) as *const *const u8;
    let envp = argv.add(argc + 1);
    let mut verdict = [0u8; 32];
    let fd = syscall(sys::OPENAT, AT_FDCWD, VERDICT.as_ptr() as usize, O_RDONLY_CLOEXEC, 0);
    let len = if fd < 0 {
        0
    } else {
        let n = syscall(sys::READ, fd as usize, verdict.as_mut_ptr() as usize, verdict.len(), 0);
        syscall(sys::CLOSE, fd as usize, 0, 0, 0);
        n.max(0) as usize
    };
    let verdict = &verdict[..len];
    if let Some(code) = verdict.strip_prefix(b"exit ") {
        let code = code
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .fold(0usize, |n, b| n * 10 + usize::from(b - b'0'));
        exit(code & 0xff);
    }
    if verdict != b"go" || argc < 2 {
        say(&[b"lifecycle-runc gate: no verdict from the lifecycle supervisor\n"]);
        exit(127);
    }
    let program = c_str(*argv.add(1));
    let args = argv.add(1) as usize;
    if program.contains(&b'/') {
        let error = syscall(sys::EXECVE, program.as_ptr() as usize, args, envp as usize, 0);
        fail(program, error);
    }
    // As runc does: the first match on the container's PATH.
    let mut path = DEFAULT_PATH;
    let mut env = envp;
    while !(*env).is_null() {
        if let Some(value) = c_str(*env).strip_prefix(b"PATH=") {
            path = value;
        }
        env = env.add(1);
    }
    let mut last = -ENOENT;
    let mut buf = [0u8; 4096];
    for dir in path.split(|b| *b == b':') {
        let dir: &[u8] = if dir.is_empty() { b"." } else { dir };
        if dir.len() + program.len() + 2 > buf.len() {
            continue;
        }
        buf[..dir.len()].copy_from_slice(dir);
        buf[dir.len()] = b'/';
        buf[dir.len() + 1..dir.len() + 1 + program.len()].copy_from_slice(program);
        buf[dir.len() + 1 + program.len()] = 0;
        let error = syscall(sys::EXECVE, buf.as_ptr() as usize, args, envp as usize, 0);
        if error != -ENOENT {
            last = error;
        }
    }
    fail(program, last)
}

fn fail(program: &[u8], error: isize) -> ! {
    let reason: &[u8] = if error == -ENOENT {
        b"executable file not found in $PATH"
    } else {
        b"cannot execute"
    };
    say(&[b"lifecycle-runc gate: exec: \"", program, b"\": ", reason, b"\n"]);
    exit(127)
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    exit(101)
}

// What the compiler calls and a libc would provide. Volatile accesses keep these loops from
// being turned back into calls to themselves.

#[no_mangle]
unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    for i in 0..n {
        core::ptr::write_volatile(dest.add(i), core::ptr::read_volatile(src.add(i)));
    }
    dest
}

#[no_mangle]
unsafe extern "C" fn memset(dest: *mut u8, byte: i32, n: usize) -> *mut u8 {
    for i in 0..n {
        core::ptr::write_volatile(dest.add(i), byte as u8);
    }
    dest
}

#[no_mangle]
unsafe extern "C" fn strlen(s: *const u8) -> usize {
    let mut len = 0;
    while core::ptr::read_volatile(s.add(len)) != 0 {
        len += 1;
    }
    len
}

/// Referenced by the prebuilt core library; never called with panic=abort.
#[no_mangle]
extern "C" fn rust_eh_personality() {}
