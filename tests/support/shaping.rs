//! Support for the shaping tests against real `smtp-sink` processes: a small blocking SMTP client (the
//! engine does not exist yet, so plain threads gated by the shaping layer play its part) and a sampler of
//! the sink's established connections read from `/proc/net/tcp`.

use std::collections::HashSet;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::time::Duration;

/// A blocking SMTP client session: one TCP connection.
#[derive(Debug)]
pub struct SmtpClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

/// A reply: its code and its text lines joined by newlines.
pub type SmtpReply = (u16, String);

impl SmtpClient {
    /// Connects and reads the greeting, waiting at most `timeout` for each read.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<(SmtpClient, SmtpReply)> {
        let s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_nodelay(true)?;
        let mut c = SmtpClient {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        };
        let greeting = c.reply()?;
        Ok((c, greeting))
    }

    /// Reads one (possibly multi-line) reply.
    pub fn reply(&mut self) -> io::Result<SmtpReply> {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed",
                ));
            }
            let line = line.trim_end();
            let code: u16 = line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, line.to_string()))?;
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(line.get(4..).unwrap_or(""));
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok((code, text));
            }
        }
    }

    /// Sends one command line and reads its reply.
    pub fn command(&mut self, line: &str) -> io::Result<SmtpReply> {
        self.writer.write_all(line.as_bytes())?;
        self.writer.write_all(b"\r\n")?;
        self.reply()
    }

    /// One transaction: MAIL, RCPT, DATA, body; returns the first reply that is not positive, or the
    /// reply to the end of data.
    pub fn send_message(&mut self, from: &str, to: &str, body: &str) -> io::Result<SmtpReply> {
        for cmd in [format!("MAIL FROM:<{from}>"), format!("RCPT TO:<{to}>")] {
            let r = self.command(&cmd)?;
            if r.0 >= 400 {
                return Ok(r);
            }
        }
        let r = self.command("DATA")?;
        if r.0 != 354 {
            return Ok(r);
        }
        self.writer.write_all(body.as_bytes())?;
        self.writer.write_all(b"\r\n.\r\n")?;
        self.reply()
    }

    /// QUIT, then wait until the server has closed its side, so that by the time this returns the
    /// server no longer counts the connection.
    pub fn quit(mut self) -> io::Result<()> {
        let _ = self.command("QUIT");
        let mut rest = Vec::new();
        let _ = self.reader.read_to_end(&mut rest);
        Ok(())
    }
}

/// The TCP connections to `server` established on the server's side (including those waiting in its
/// accept queue), from one read of `/proc/net/tcp`, as (local, remote) address pairs.
///
/// One read is not an atomic snapshot: the kernel walks its hash table while connections come and go, so
/// a connection closed in a bucket already listed and another opened in a bucket not yet listed are both
/// reported. Use [`established_at`] for a count that never over-counts.
pub fn established_once(server: SocketAddrV4) -> HashSet<String> {
    let want = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(server.ip().octets()),
        server.port()
    );
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 3 && f[1] == want && f[3] == "01").then(|| format!("{} {}", f[1], f[2]))
        })
        .collect()
}

/// How many connections to `server` were established at one same instant: those listed by two
/// consecutive reads of `/proc/net/tcp`. A connection in both reads existed from within the first to
/// within the second, so all of them existed together at the end of the first read: the count is never
/// more than the real concurrency (it may miss connections shorter than a read).
pub fn established_at(server: SocketAddrV4) -> usize {
    let a = established_once(server);
    let b = established_once(server);
    a.intersection(&b).count()
}

/// Whether this process runs as root (smtp-sink then needs `-u nobody`).
pub fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}
