//! Child processes: the `wxtoken` binary with a clean environment, a child
//! whose stdout is read line by line, signals and exit codes. Every child is
//! killed when its handle drops.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The variables the shipped `accounts.yaml` reads its secrets from, with
/// the example values the docs use.
pub const EXAMPLE_SECRETS: [(&str, &str); 3] = [
    ("WX_SECRET_BRAND_A", "example-secret-brand-a-7f3e"),
    ("WX_SECRET_BRAND_B", "example-secret-brand-b-91c2"),
    ("WX_SECRET_BRAND_C", "example-secret-brand-c-05d8"),
];

/// `wxtoken ARGS` with none of the example secrets in its environment.
pub fn wxtoken(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wxtoken"));
    cmd.args(args)
        .env_remove("WXTOKEN_CONFIG")
        .env("NO_COLOR", "1");
    for (name, _) in EXAMPLE_SECRETS {
        cmd.env_remove(name);
    }
    cmd
}

/// A child process, killed on drop.
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// Spawns `cmd`; panics when it cannot start.
    pub fn spawn(mut cmd: Command) -> KillOnDrop {
        KillOnDrop(cmd.spawn().expect("the child process starts"))
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A child process killed on drop, with its stdout lines arriving on a channel.
pub struct Running {
    pub child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    /// Spawns `cmd` with its stdout read line by line and its stderr dropped.
    pub fn spawn(mut cmd: Command) -> Running {
        cmd.stdout(Stdio::piped()).stderr(Stdio::null());
        let mut child = cmd.spawn().expect("wxtoken starts");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running { child, lines }
    }

    /// Stdout lines up to and including the first one `last` accepts.
    pub fn read_until(&self, last: impl Fn(&str) -> bool) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            match self.lines.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => {
                    let done = last(&line);
                    seen.push(line);
                    if done {
                        return seen;
                    }
                }
                Err(e) => panic!("wxtoken printed {seen:#?} and then nothing ({e})"),
            }
        }
    }

    /// Sends SIGTERM and returns the exit code.
    pub fn terminate(mut self) -> Option<i32> {
        send_signal(&self.child, "TERM");
        let code = self.child.wait().expect("wxtoken exits").code();
        std::mem::forget(self);
        code
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `signal` (`INT`, `TERM`, ...) to `child`; panics when `kill` fails.
pub fn send_signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([format!("-{signal}"), child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{signal} failed");
}

/// Waits (bounded) until `child` exits and returns its exit code.
pub async fn exit_code(child: &mut Child, within: Duration) -> Option<i32> {
    super::wait::Wait::up_to(within)
        .every(Duration::from_millis(50))
        .for_value("wxtoken exits", || {
            child
                .try_wait()
                .expect("wait for wxtoken")
                .map(|status| status.code())
        })
        .await
}
