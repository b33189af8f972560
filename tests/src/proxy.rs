//! A TCP proxy a test controls, to make a shared server unreachable
//! without stopping it: [`Proxy::cut`] closes every relayed connection and
//! every new one at once, [`Proxy::restore`] relays again, and
//! [`Proxy::stall`] keeps the relayed connections open but passes nothing
//! more either way (a server that stopped answering). Other tests keep
//! using the server meanwhile, and the test itself can still reach it
//! directly (to check what was written while its worker could not).

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A proxy on a free local port to one server; see the [module docs](self).
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    cut: watch::Sender<bool>,
    stall: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Relays a free port of 127.0.0.1 to `target`.
    pub async fn start(target: SocketAddr) -> io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (cut, cut_seen) = watch::channel(false);
        let (stall, stall_seen) = watch::channel(false);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *cut_seen.borrow() {
                    continue; // dropped: closed at once
                }
                tokio::spawn(relay(client, target, cut_seen.clone(), stall_seen.clone()));
            }
        });
        Ok(Proxy {
            addr,
            cut,
            stall,
            accept,
        })
    }

    /// The proxy's address: connect here instead of to the server.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every relayed connection; new ones are closed at once.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Relays new connections again.
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }

    /// Stops passing bytes on every relayed connection, keeping it open
    /// (until [`cut`](Self::cut) or the proxy's drop): the server seems to
    /// have stopped answering.
    pub fn stall(&self) {
        self.stall.send_replace(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut.send_replace(true);
        self.accept.abort();
    }
}

/// Relays `client` to `target` until either side closes or the proxy is
/// cut; once stalled, holds both open without passing anything until cut.
async fn relay(
    mut client: TcpStream,
    target: SocketAddr,
    mut cut: watch::Receiver<bool>,
    mut stall: watch::Receiver<bool>,
) {
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    let stalled = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => false,
        _ = cut.wait_for(|cut| *cut) => false,
        _ = stall.wait_for(|stalled| *stalled) => true,
    };
    if stalled {
        let _ = cut.wait_for(|cut| *cut).await;
    }
}
