//! What a worker process uses, read from Linux's `/proc`: its resident memory and the
//! CPU time of its main thread (where its tasks run), for the memory limit and the CPU
//! budget of tasks that run in worker processes. Elsewhere both read as unknown, and
//! the limits are not enforced there.

use std::time::Duration;

/// The resident memory of process `pid` (`VmRSS` of `/proc/PID/status`), in bytes.
pub(super) fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU time of the main thread of process `pid`: the first field of
/// `/proc/PID/schedstat`, nanoseconds spent on a CPU.
pub(super) fn main_thread_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).ok()?;
    let nanos: u64 = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_memory_and_cpu_time() {
        let pid = std::process::id();
        let rss = resident_bytes(pid).expect("VmRSS");
        assert!(rss > 1 << 20, "{rss}");
        let before = main_thread_cpu(pid).expect("schedstat");
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(main_thread_cpu(pid).expect("schedstat") >= before);
    }
}
