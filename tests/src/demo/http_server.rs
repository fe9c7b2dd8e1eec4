//! The demo's stand-in for gin-vue-admin's gin, vue and web-server containers
//! (`ferry-demo http-server --pod NAME --port PORT`): every HTTP request gets one line saying
//! which pod answered, the path it received, the client address it saw and the
//! X-Forwarded-For header a proxy added. Prints `ready` once listening. Threads, std only.

use std::{
    collections::BTreeMap,
    io::{self, BufRead, BufReader, Write},
    net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream},
    thread,
    time::Duration,
};

/// Serves until killed.
pub fn serve(pod: &str, port: u16) -> io::Result<()> {
    // One dual-stack socket (bindv6only is 0 on Linux): IPv4 clients arrive as ::ffff:a.b.c.d
    // and are shown as a.b.c.d.
    let listener = TcpListener::bind(("::", port))?;
    println!("ready");
    io::stdout().flush()?;
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        let pod = pod.to_owned();
        thread::spawn(move || {
            if let Err(e) = answer(stream, &pod) {
                eprintln!("http-server {pod}: {e}");
            }
        });
    }
    Ok(())
}

fn answer(stream: TcpStream, pod: &str) -> io::Result<()> {
    let mut peer = stream.peer_addr()?;
    if let IpAddr::V6(v6) = peer.ip()
        && let Some(v4) = v6.to_ipv4_mapped()
    {
        peer = SocketAddr::new(v4.into(), peer.port());
    }
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    if reader.read_line(&mut request)? == 0 {
        return Ok(()); // a readiness probe: connect and close
    }
    let mut headers = BTreeMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let path = request.split_whitespace().nth(1).unwrap_or("?");
    let header = |k: &str| headers.get(k).map_or("-", String::as_str).replace(' ', "");
    let body = format!(
        "pod={pod} path={path} client={peer} host={} x-forwarded-for={}\n",
        header("host"),
        header("x-forwarded-for"),
    );
    eprintln!("{}", body.trim_end());
    let mut w = stream;
    write!(
        w,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    w.flush()?;
    let _ = w.shutdown(Shutdown::Write);
    Ok(())
}

/// One answer of [`serve`], parsed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Answer {
    pub pod: String,
    pub path: String,
    /// ip:port
    pub client: String,
    pub host: String,
    pub forwarded_for: String,
}

impl Answer {
    /// Parses one line (`pod=... path=... client=...`); None if it is not one.
    pub fn parse(line: &str) -> Option<Answer> {
        let mut fields: BTreeMap<&str, &str> = line
            .split_whitespace()
            .filter_map(|f| f.split_once('='))
            .collect();
        let mut take = |k| fields.remove(k).map(str::to_owned);
        Some(Answer {
            pod: take("pod")?,
            path: take("path")?,
            client: take("client")?,
            host: take("host").unwrap_or_default(),
            forwarded_for: take("x-forwarded-for").unwrap_or_default(),
        })
    }

    /// The client's IP (without the port, nor an IPv6 address's brackets).
    pub fn client_ip(&self) -> &str {
        let ip = self
            .client
            .rsplit_once(':')
            .map_or(self.client.as_str(), |(ip, _)| ip);
        ip.strip_prefix('[')
            .and_then(|ip| ip.strip_suffix(']'))
            .unwrap_or(ip)
    }

    /// Every answer in a text of several.
    pub fn parse_all(text: &str) -> Vec<Answer> {
        text.lines().filter_map(Answer::parse).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::Answer;

    #[test]
    fn answers_parse() {
        let a = Answer::parse(
            "pod=gin-1 path=/x client=10.244.0.9:4242 host=gin-vue.test.com x-forwarded-for=172.18.0.100",
        )
        .unwrap();
        assert_eq!(a.pod, "gin-1");
        assert_eq!(a.path, "/x");
        assert_eq!(a.client_ip(), "10.244.0.9");
        assert_eq!(a.forwarded_for, "172.18.0.100");
        assert_eq!(Answer::parse("nope"), None);
        let b = Answer::parse("pod=w path=/ client=[fd00:172:18::100]:4242").unwrap();
        assert_eq!(b.client_ip(), "fd00:172:18::100");
    }
}
