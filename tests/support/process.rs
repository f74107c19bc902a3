//! cachet as a child process (the `cachet` binary of this build), for tests that measure
//! what the process holds: resident memory and open file descriptors, read from
//! `/proc/<pid>`. Also the file-descriptor limit of the test process itself.

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::raw::{Raw, words};
use super::redis::free_port;

pub struct CachetProcess {
    child: Child,
    pub addr: SocketAddr,
}

impl CachetProcess {
    /// Starts `cachet --upstream <url>` on a free port (admin off, warnings only) and
    /// waits until it answers `PING`.
    pub fn start(upstream_url: &str) -> CachetProcess {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = Command::new(env!("CARGO_BIN_EXE_cachet"))
            .args(["--listen", &addr.to_string()])
            .args(["--upstream", upstream_url])
            .args(["--admin", "off", "--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn cachet");
        let mut process = CachetProcess { child, addr };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect(addr).is_ok()
                && Raw::connect(addr).call(&words("PING")) == b"+PONG\r\n"
            {
                return process;
            }
            assert!(
                process.child.try_wait().ok().flatten().is_none(),
                "cachet exited"
            );
            assert!(Instant::now() < deadline, "cachet did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory (`VmRSS`), in KiB.
    pub fn rss_kib(&self) -> u64 {
        status_field(self.pid(), "VmRSS:")
    }

    /// Open file descriptors.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// The process's soft limit on open files.
    pub fn nofile_limit(&self) -> u64 {
        nofile_limit(&self.pid().to_string())
    }
}

impl Drop for CachetProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn status_field(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The soft `Max open files` of `/proc/<pid>/limits` (`pid` may be `self`).
pub fn nofile_limit(pid: &str) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Makes sure this process (and the children it starts from now on) may open `want`
/// files, raising the soft limit to the hard one with `prlimit` when it is lower.
pub fn ensure_nofile(want: u64) {
    if nofile_limit("self") >= want {
        return;
    }
    let pid = std::process::id().to_string();
    let _ = Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={want}:")])
        .status();
    let now = nofile_limit("self");
    assert!(
        now >= want,
        "this test needs {want} open files; the limit is {now} (raise `ulimit -n`)"
    );
}
