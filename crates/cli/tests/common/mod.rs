//! What the CLI's end-to-end tests share: starting `wayfinder serve` and waiting until it
//! serves.

#![allow(dead_code)] // each test binary uses its own part

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Kills the server if the test fails half-way.
pub(crate) struct Server(pub(crate) Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `wayfinder serve` as `command` sets it up and waits until it serves; the line it
/// logged then ("serving the OpenAI API address=… model=… folder=… engine=…").
pub(crate) fn serve_ready_line(command: &mut Command) -> (Server, String) {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wayfinder serve starts");
    let stderr = child.stderr.take().expect("piped");
    let server = Server(child);
    let (tx, rx) = mpsc::channel::<Result<String, String>>();
    std::thread::spawn(move || {
        let mut all = String::new();
        let mut lines = BufReader::new(stderr).lines().map_while(Result::ok);
        for line in lines.by_ref() {
            all.push_str(&line);
            all.push('\n');
            if line.contains("serving the OpenAI API") {
                let _ = tx.send(Ok(line));
                // Keep reading: a closed pipe would make the server's (and its engine
                // child's) later log writes fail.
                lines.for_each(drop);
                return;
            }
        }
        let _ = tx.send(Err(all));
    });
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(Ok(line)) => (server, line),
        Ok(Err(log)) => panic!("serve exited before serving:\n{log}"),
        Err(e) => panic!("serve did not start: {e}"),
    }
}

/// As [`serve_ready_line`]; the folder it logs as the model's.
pub(crate) fn serve_until_ready(command: &mut Command) -> (Server, String) {
    let (server, line) = serve_ready_line(command);
    let folder = field(&line, "folder=");
    (server, folder)
}

/// The value after `key` in a log line, up to the next space.
pub(crate) fn field(line: &str, key: &str) -> String {
    line.find(key)
        .map(|at| {
            line[at + key.len()..]
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .unwrap_or_default()
}
