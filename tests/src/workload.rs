//! Workloads in a lab: lab-echo servers and clients (curl, lab-client) run from pods.
//!
//! lab-echo serves each port over IPv4 and IPv6; lab-client's targets are `ip:port` or
//! `[ipv6]:port` (`SocketAddr`'s text: `SocketAddr::new(pod.ip6.into(), port).to_string()`).

use std::{
    fs,
    time::{Duration, Instant},
};

use crate::{
    client::{Attempt, parse_lines},
    lab::{Lab, Pod},
    proc::{self, POLL, Proc},
};

impl Lab {
    /// `curl -sS --max-time 5 URL` from the pod: Ok(body) or Err(curl's complaint).
    pub fn curl(&self, pod: &Pod, url: &str) -> std::result::Result<String, String> {
        let out = self.output(pod, "curl", &["-sS", "--max-time", "5", url]);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "curl {url} from {}: {} {}",
                pod.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// `curl -sS --max-time SECS ARGS... URL` from `from`: Ok(body) or Err((curl's exit code,
    /// its complaint)), with the time it took. For an IPv6 literal in the URL pass
    /// `["-6", "-g"]` (`-g`: brackets are no glob).
    pub fn curl_timed(
        &self,
        from: &Pod,
        url: &str,
        max_time: Duration,
        extra: &[&str],
    ) -> (std::result::Result<String, (i32, String)>, Duration) {
        let secs = format!("{:.3}", max_time.as_secs_f64());
        let mut args = vec!["-sS", "--max-time", &secs];
        args.extend_from_slice(extra);
        args.push(url);
        let start = Instant::now();
        let out = self.output_timeout(from, "curl", &args, max_time + Duration::from_secs(10));
        let took = start.elapsed();
        let result = if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err((
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            ))
        };
        (result, took)
    }

    /// Starts `lab-echo --name <pod>` serving the given ports, once it printed `ready`.
    pub fn start_echo(&self, pod: &Pod, tcp: &[u16], udp: &[u16]) -> Proc {
        let mut args = vec!["--name".to_owned(), pod.name.clone()];
        for p in tcp {
            args.extend(["--tcp".to_owned(), p.to_string()]);
        }
        for p in udp {
            args.extend(["--udp".to_owned(), p.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let echo = self.spawn(pod, proc::lab_binary("lab-echo"), &args);
        if echo
            .wait_line(Duration::from_secs(10), |l| l == "ready")
            .is_none()
        {
            panic!(
                "lab-echo in {} did not get ready: {}",
                pod.name,
                self.logs_of(&pod.name)
            );
        }
        echo
    }

    /// The stderr logs of the pod's programs.
    pub fn logs_of(&self, pod: &str) -> String {
        let mut text = String::new();
        if let Ok(dir) = fs::read_dir(self.tmp.join("logs")) {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(&format!("{pod}-")) {
                    let body = fs::read_to_string(e.path()).unwrap_or_default();
                    text.push_str(&format!("--- {name}\n{body}"));
                }
            }
        }
        text
    }

    /// Runs `lab-client ARGS...` in the pod and returns its attempts.
    pub fn client(&self, pod: &Pod, args: &[&str]) -> Vec<Attempt> {
        let out = self.output_timeout(
            pod,
            proc::lab_binary("lab-client"),
            args,
            Duration::from_secs(60),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let attempts = parse_lines(text.lines());
        if attempts.is_empty() {
            panic!(
                "lab-client {args:?} in {} printed nothing ({}): {}",
                pod.name,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        attempts
    }

    /// `count` TCP connections from the pod to `target` (ip:port), each sending one line.
    pub fn tcp(&self, pod: &Pod, target: &str, count: u32) -> Vec<Attempt> {
        self.client(pod, &["tcp", target, "--count", &count.to_string()])
    }

    /// `count` unconnected UDP datagrams from one socket of the pod to `target`.
    pub fn udp(&self, pod: &Pod, target: &str, count: u32) -> Vec<Attempt> {
        self.client(pod, &["udp", target, "--count", &count.to_string()])
    }

    /// Starts `lab-client ARGS... --count 0` (endless) in the pod; collect with
    /// [`ClientLoop`].
    pub fn client_loop(&self, pod: &Pod, args: &[&str]) -> ClientLoop {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--count", "0"]);
        let proc = self.spawn(pod, proc::lab_binary("lab-client"), &all);
        ClientLoop {
            proc,
            seen: Vec::new(),
        }
    }
}

/// An endless `lab-client` run whose attempts are collected as they come.
pub struct ClientLoop {
    proc: Proc,
    seen: Vec<Attempt>,
}

impl ClientLoop {
    fn pull(&mut self) {
        let lines = self.proc.drain_lines();
        self.seen
            .extend(parse_lines(lines.iter().map(String::as_str)));
    }

    /// Every attempt so far.
    pub fn attempts(&mut self) -> &[Attempt] {
        self.pull();
        &self.seen
    }

    /// Waits until at least `n` more attempts than now were made (panics after `timeout`).
    pub fn wait_more(&mut self, n: usize, timeout: Duration) {
        self.pull();
        let want = self.seen.len() + n;
        let deadline = Instant::now() + timeout;
        while self.seen.len() < want {
            assert!(
                Instant::now() < deadline && self.proc.is_running(),
                "the client loop made {} of {want} attempts within {timeout:?}",
                self.seen.len()
            );
            if let Some(line) = self.proc.next_line(POLL)
                && let Some(a) = Attempt::parse(&line)
            {
                self.seen.push(a);
            }
        }
    }

    /// Waits until an attempt satisfies `pred` (looking only at attempts made from now on).
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&Attempt) -> bool) -> Attempt {
        self.pull();
        let deadline = Instant::now() + timeout;
        loop {
            assert!(
                Instant::now() < deadline && self.proc.is_running(),
                "the client loop saw no matching attempt within {timeout:?}"
            );
            if let Some(line) = self.proc.next_line(POLL)
                && let Some(a) = Attempt::parse(&line)
            {
                self.seen.push(a.clone());
                if pred(&a) {
                    return a;
                }
            }
        }
    }

    /// Ends the client and returns every attempt it made.
    pub fn stop(mut self) -> Vec<Attempt> {
        self.proc.terminate();
        while let Some(line) = self.proc.next_line(Duration::from_secs(1)) {
            self.seen.extend(Attempt::parse(&line));
        }
        std::mem::take(&mut self.seen)
    }
}
