//! What the end-to-end harnesses share: running an agent binary as a child and reading its CPU
//! time and peak RSS from `wait4` when it exits.

use std::process::Child;

pub struct Run {
    pub cpu: f64,
    pub max_rss_kib: i64,
    pub ok: bool,
}

/// Waits for `child` to exit and returns its resource usage.
pub fn wait_rusage(child: Child) -> Run {
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child; `usage` is a valid out-pointer.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    // Reaped above: dropping `Child` must not wait again.
    std::mem::forget(child);
    Run {
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        max_rss_kib: usage.ru_maxrss,
        ok: r == pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
    }
}
