//! One process of the binary under test: started with arguments and environment, killed with
//! SIGKILL, frozen with SIGSTOP and thawed with SIGCONT, stopped with SIGTERM, restarted on the
//! same data folder. Its output is appended to one log file across restarts, printed when a test
//! fails while it runs, and its memory is sampled. [`bin`] finds the binaries of the workspace.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// The folder of the running test's or benchmark's executable in the target folder
/// (`target/release`, not its `deps`), where cargo puts the workspace's binaries.
pub fn target_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe
        .parent()
        .context("executable without a folder")?
        .to_owned();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().context("deps without a parent")?.to_owned();
    }
    Ok(dir)
}

/// A folder of prebuilt binaries named by `MERIDIAN_BIN_DIR`, when it is set: tests, benchmarks
/// and chaos scenarios then run those instead of the target folder's.
pub fn prebuilt_dir() -> Option<PathBuf> {
    std::env::var_os("MERIDIAN_BIN_DIR").map(PathBuf::from)
}

/// The path of the workspace binary `name` (`meridian`): in [`prebuilt_dir`] when that is set,
/// else beside the running executable in the target folder. Fails, saying how to build it, when
/// it is missing.
pub fn bin(name: &str) -> Result<PathBuf> {
    let dir = match prebuilt_dir() {
        Some(d) => d,
        None => target_dir()?,
    };
    let path = dir.join(name);
    anyhow::ensure!(
        path.exists(),
        "{} is missing: run cargo build --release -p meridian --bin {name}",
        path.display()
    );
    Ok(path)
}

/// `program args…` run on CPU `core` (`taskset -c core program args…`), or anywhere without one.
/// `taskset` execs the program, so the process id is the program's.
pub fn pinned(
    core: Option<usize>,
    program: &Path,
    args: Vec<String>,
) -> Result<(PathBuf, Vec<String>)> {
    let Some(c) = core else {
        return Ok((program.to_owned(), args));
    };
    let program = program
        .to_str()
        .with_context(|| format!("{} is not UTF-8", program.display()))?;
    let mut all = vec!["-c".to_owned(), c.to_string(), program.to_owned()];
    all.extend(args);
    Ok((PathBuf::from("taskset"), all))
}

/// A process of the binary under test.
#[derive(Debug)]
pub struct Proc {
    /// `dcD-nI`.
    pub name: String,
    bin: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    frozen: bool,
    /// Largest resident set seen, in KiB.
    pub max_rss_kib: u64,
    /// Exits nobody asked for: (when, status).
    pub crashes: Vec<String>,
    /// Print the log when dropped during a panic (a failing test); on unless turned off.
    pub print_log_on_failure: bool,
}

fn signal(pid: u32, sig: &str) -> Result<()> {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill {sig} {pid} failed");
    }
    Ok(())
}

impl Proc {
    /// Starts `bin args...` with `env`, output appended to `log`.
    pub fn start(
        name: &str,
        bin: &Path,
        args: Vec<String>,
        env: Vec<(String, String)>,
        log: &Path,
    ) -> Result<Proc> {
        let mut p = Proc {
            name: name.to_owned(),
            bin: bin.to_owned(),
            args,
            env,
            log: log.to_owned(),
            child: None,
            frozen: false,
            max_rss_kib: 0,
            crashes: Vec::new(),
            print_log_on_failure: true,
        };
        p.spawn()?;
        Ok(p)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(&self.args)
            // `MERIDIAN_TEST_LOG` turns up every started process's log while chasing a failure.
            .env(
                "RUST_LOG",
                std::env::var("MERIDIAN_TEST_LOG")
                    .unwrap_or_else(|_| "info,openraft=warn".to_owned()),
            )
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.child = Some(
            cmd.spawn()
                .with_context(|| format!("spawning {}", self.bin.display()))?,
        );
        self.frozen = false;
        Ok(())
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process runs (frozen counts as running).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(Ok(Some(status))) => {
                self.crashes.push(format!("exited by itself with {status}"));
                self.child = None;
                false
            }
            _ => false,
        }
    }

    /// Whether it is stopped with SIGSTOP.
    pub fn is_frozen(&self) -> bool {
        self.frozen
    }

    /// SIGKILL: nothing is flushed.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        self.frozen = false;
        Ok(())
    }

    /// SIGSTOP: the process keeps its sockets but answers nothing.
    pub fn freeze(&mut self) -> Result<()> {
        let pid = self.pid().context("freezing a process that does not run")?;
        signal(pid, "-STOP")?;
        self.frozen = true;
        Ok(())
    }

    /// SIGCONT.
    pub fn thaw(&mut self) -> Result<()> {
        let pid = self.pid().context("thawing a process that does not run")?;
        signal(pid, "-CONT")?;
        self.frozen = false;
        Ok(())
    }

    /// SIGTERM, then waits up to 20 s for a clean exit (SIGKILL after that, and an error).
    pub fn stop(&mut self) -> Result<()> {
        if self.frozen {
            self.thaw()?;
        }
        let Some(mut c) = self.child.take() else {
            return Ok(());
        };
        signal(c.id(), "-TERM")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = c.try_wait()? {
                if !status.success() {
                    bail!("{} exited with {status} after SIGTERM", self.name);
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                bail!("{} did not exit within 20 s of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the process again, on the same data folder and ports (after a kill or a stop).
    pub fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            self.kill9()?;
        }
        self.spawn()
    }

    /// Reads the resident set size and keeps the largest seen; `None` if not running.
    pub fn sample_rss(&mut self) -> Option<u64> {
        let pid = self.pid()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())?;
        self.max_rss_kib = self.max_rss_kib.max(kib);
        Some(kib)
    }

    /// The log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// What the process has written so far (every start's output).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How it ended, if it has (and nobody reaped it yet).
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if self.frozen {
                let _ = signal(c.id(), "-CONT");
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // A test that fails while the process runs shows what the process said.
        if std::thread::panicking() && self.print_log_on_failure {
            eprintln!("----- log of {} -----\n{}", self.name, self.log_text());
        }
    }
}
