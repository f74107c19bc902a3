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
    /// waits until it answers.
    pub fn start(upstream_url: &str) -> CachetProcess {
        let upstream = upstream_address(upstream_url);
        let (child, addr) = spawn_listening(
            |addr| {
                Command::new(env!("CARGO_BIN_EXE_cachet"))
                    .args(["--listen", &addr.to_string()])
                    .args(["--upstream", upstream_url])
                    .args(["--admin", "off", "--log-level", "error"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("spawn cachet")
            },
            |addr| cachet_info(addr, b"").is_some_and(|info| info.contains(&upstream)),
        );
        CachetProcess { child, addr }
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

/// Starts a child that listens on a free port: `spawn` starts it listening on the
/// address given, `is_it` tells whether what answers there is that child. A port free
/// a moment ago may be taken by a parallel test's server before the child binds it;
/// the child then exits (or another server answers), and another port is tried.
pub fn spawn_listening(
    mut spawn: impl FnMut(SocketAddr) -> Child,
    is_it: impl Fn(SocketAddr) -> bool,
) -> (Child, SocketAddr) {
    const ATTEMPTS: usize = 5;
    for _ in 0..ATTEMPTS {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut child = spawn(addr);
        let exited = |child: &mut Child| child.try_wait().ok().flatten().is_some();
        let deadline = Instant::now() + Duration::from_secs(20);
        let listening = loop {
            if exited(&mut child) {
                break false;
            }
            if TcpStream::connect(addr).is_ok() {
                break true;
            }
            assert!(Instant::now() < deadline, "cachet did not start");
            std::thread::sleep(Duration::from_millis(20));
        };
        if listening && is_it(addr) && !exited(&mut child) {
            return (child, addr);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("cachet did not start on a free port in {ATTEMPTS} attempts");
}

/// `CACHET INFO`'s text from whatever answers at `addr`, after `login` (raw commands,
/// replies skipped); `None` if the reply is not a bulk string (not cachet, or not
/// logged in) or does not come within a few seconds.
pub fn cachet_info(addr: SocketAddr, login: &[u8]) -> Option<String> {
    let mut c = Raw::connect(addr);
    c.send(login);
    c.send(&words("CACHET INFO"));
    let wait = Duration::from_secs(2);
    let mut reply = c.try_frame(wait)?;
    if !login.is_empty() {
        reply = c.try_frame(wait)?;
    }
    reply
        .starts_with(b"$")
        .then(|| String::from_utf8_lossy(&reply).into_owned())
}

/// `host:port` of a `redis://` URL, as `CACHET INFO` shows it in `upstream_address`.
fn upstream_address(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let host_port = rest.split('/').next().unwrap_or(rest);
    format!("upstream_address:{host_port}\r\n")
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
