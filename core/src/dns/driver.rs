//! The mio driver: runs a [`Resolver`] with one mio UDP socket or TCP connection per exchange, registered
//! in the caller's [`mio::Registry`] under tokens `base..base + max_in_flight`.
//!
//! Each UDP exchange binds a fresh socket to port 0 of the unspecified address of the server's family
//! (Linux picks the source port at random from the ephemeral range) and connects it to the server, so
//! the kernel already drops datagrams from other senders; the core checks the sender again. TCP
//! exchanges connect without blocking and write the query when the socket becomes writable.
//!
//! The driver reads sockets until they would block, so it works with mio's edge-triggered readiness and
//! tolerates spurious or stale events (a token whose exchange was just closed or reused).

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::time::Instant;

use mio::net::{TcpStream, UdpSocket};
use mio::{Interest, Registry, Token};

use super::{Event, ExchangeId, Query, Resolver, Stats, Transmit, Transport};

/// Datagrams read from one socket per readiness call (the rest wait for the next call).
const MAX_DATAGRAMS_PER_READY: usize = 64;

#[derive(Debug)]
enum Socket {
    Udp(UdpSocket),
    Tcp {
        stream: TcpStream,
        out: Vec<u8>,
        written: usize,
    },
}

#[derive(Debug)]
struct Slot {
    socket: Socket,
    generation: u64,
}

/// A [`Resolver`] with its sockets, for a mio event loop. See [`crate::dns`] for an example loop.
#[derive(Debug)]
pub struct Driver {
    resolver: Resolver,
    slots: Vec<Option<Slot>>,
    base: usize,
    generation: u64,
    buf: Vec<u8>,
}

impl Driver {
    /// Wraps `resolver`; its sockets use the tokens `token_base..token_base + max_in_flight`.
    pub fn new(resolver: Resolver, token_base: usize) -> Driver {
        let n = resolver.config().max_in_flight;
        Driver {
            resolver,
            slots: (0..n).map(|_| None).collect(),
            base: token_base,
            generation: 0,
            buf: vec![0; 65_536],
        }
    }

    /// The tokens this driver registers sockets under.
    pub fn tokens(&self) -> Range<usize> {
        self.base..self.base + self.slots.len()
    }

    /// Whether `token` belongs to this driver.
    pub fn owns(&self, token: Token) -> bool {
        self.tokens().contains(&token.0)
    }

    /// The resolver core (configuration, counters).
    pub fn resolver(&self) -> &Resolver {
        &self.resolver
    }

    /// Counters of the resolver core.
    pub fn stats(&self) -> Stats {
        self.resolver.stats()
    }

    /// Starts a lookup; its [`Event`] carries `token`.
    pub fn lookup(&mut self, registry: &Registry, now: Instant, token: u64, query: Query) {
        self.resolver.lookup(now, token, query);
        self.flush(registry, now);
    }

    /// Forgets the lookups started with `token` (see [`Resolver::cancel`]).
    pub fn cancel(&mut self, token: u64) -> usize {
        self.resolver.cancel(token)
    }

    /// The next finished lookup.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.resolver.poll_event()
    }

    /// When [`Driver::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.resolver.poll_timeout()
    }

    /// Call when the timer from [`Driver::poll_timeout`] passes (calling it early or often is harmless).
    pub fn handle_timeout(&mut self, registry: &Registry, now: Instant) {
        self.resolver.handle_timeout(now);
        self.flush(registry, now);
    }

    /// Call for every mio event whose token [`Driver::owns`]: reads and writes the socket until it would
    /// block and feeds the core.
    pub fn handle_ready(&mut self, registry: &Registry, now: Instant, token: Token) {
        if !self.owns(token) {
            return;
        }
        let index = token.0 - self.base;
        let Some(generation) = self.slots[index].as_ref().map(|s| s.generation) else {
            return;
        };
        let exchange = ExchangeId(index);
        let still_open =
            |d: &Driver| matches!(&d.slots[index], Some(s) if s.generation == generation);
        let mut datagrams = 0;
        while let Some(slot) = self.slots[index].as_mut() {
            match &mut slot.socket {
                Socket::Udp(sock) => {
                    if datagrams == MAX_DATAGRAMS_PER_READY {
                        break;
                    }
                    match sock.recv_from(&mut self.buf) {
                        Ok((n, from)) => {
                            datagrams += 1;
                            self.resolver
                                .handle_datagram(now, exchange, from, &self.buf[..n]);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => self.resolver.handle_error(now, exchange, &e.to_string()),
                    }
                }
                Socket::Tcp {
                    stream,
                    out,
                    written,
                } => {
                    if let Ok(Some(e)) | Err(e) = stream.take_error() {
                        self.resolver.handle_error(now, exchange, &e.to_string());
                    } else if *written < out.len() {
                        match stream.write(&out[*written..]) {
                            Ok(n) => {
                                *written += n;
                                continue;
                            }
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    io::ErrorKind::WouldBlock | io::ErrorKind::NotConnected
                                ) =>
                            {
                                break;
                            }
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                            Err(e) => self.resolver.handle_error(now, exchange, &e.to_string()),
                        }
                    } else {
                        match stream.read(&mut self.buf) {
                            Ok(0) => self.resolver.handle_error(
                                now,
                                exchange,
                                "connection closed before the answer was complete",
                            ),
                            Ok(n) => self.resolver.handle_stream(now, exchange, &self.buf[..n]),
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                            Err(e) => self.resolver.handle_error(now, exchange, &e.to_string()),
                        }
                    }
                }
            }
            self.flush(registry, now);
            if !still_open(self) {
                break;
            }
        }
        self.flush(registry, now);
    }

    /// Carries out the core's socket requests.
    fn flush(&mut self, registry: &Registry, now: Instant) {
        while let Some(t) = self.resolver.poll_transmit() {
            match t {
                Transmit::Close { exchange } => {
                    if let Some(slot) = self.slots.get_mut(exchange.0).and_then(Option::take) {
                        let _ = match slot.socket {
                            Socket::Udp(mut s) => registry.deregister(&mut s),
                            Socket::Tcp { mut stream, .. } => registry.deregister(&mut stream),
                        };
                    }
                }
                Transmit::Send {
                    exchange,
                    server,
                    transport,
                    payload,
                } => {
                    let token = Token(self.base + exchange.0);
                    match open(registry, token, server, transport, payload) {
                        Ok(socket) => {
                            self.generation += 1;
                            self.slots[exchange.0] = Some(Slot {
                                socket,
                                generation: self.generation,
                            });
                        }
                        Err(e) => self.resolver.handle_error(now, exchange, &e.to_string()),
                    }
                }
            }
        }
    }
}

fn open(
    registry: &Registry,
    token: Token,
    server: SocketAddr,
    transport: Transport,
    payload: Vec<u8>,
) -> io::Result<Socket> {
    match transport {
        Transport::Udp => {
            let local = if server.is_ipv4() {
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
            } else {
                SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
            };
            let mut sock = UdpSocket::bind(local)?;
            sock.connect(server)?;
            sock.send(&payload)?;
            registry.register(&mut sock, token, Interest::READABLE)?;
            Ok(Socket::Udp(sock))
        }
        Transport::Tcp => {
            let mut stream = TcpStream::connect(server)?;
            registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
            Ok(Socket::Tcp {
                stream,
                out: payload,
                written: 0,
            })
        }
    }
}
