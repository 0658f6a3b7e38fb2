//! An in-process transport over channels: workers are threads of the same program. It runs the
//! same queue, wire format and serving loop as the MPI transport, so the scheduling is tested
//! without an MPI library, and a program can use it to spread a batch over fitnesses that must
//! live on threads of their own.

use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};

use crate::queue::{Incoming, Transport, WorkerTransport};
use crate::wire::Tag;

type Frame = (Tag, Vec<u64>);

/// The other end of a channel was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Disconnected {
    #[error("worker {0} hung up")]
    Worker(usize),
    #[error("every worker hung up")]
    AllWorkers,
    #[error("the root hung up")]
    Root,
}

/// The root's end: see [`in_process`].
pub struct InProcessRoot {
    to: Vec<Sender<Frame>>,
    from: Receiver<(usize, Frame)>,
}

/// A worker's end: see [`in_process`]. Send it to the worker's thread.
pub struct InProcessWorker {
    peer: usize,
    to: Sender<(usize, Frame)>,
    from: Receiver<Frame>,
}

/// A root end and `workers` worker ends connected by channels.
pub fn in_process(workers: usize) -> (InProcessRoot, Vec<InProcessWorker>) {
    let (up_tx, up_rx) = channel();
    let mut to = Vec::with_capacity(workers);
    let mut ends = Vec::with_capacity(workers);
    for peer in 0..workers {
        let (tx, rx) = channel();
        to.push(tx);
        ends.push(InProcessWorker { peer, to: up_tx.clone(), from: rx });
    }
    (InProcessRoot { to, from: up_rx }, ends)
}

impl InProcessWorker {
    /// This worker's number (0-based).
    pub fn peer(&self) -> usize {
        self.peer
    }
}

impl Transport for InProcessRoot {
    type Error = Disconnected;
    fn workers(&self) -> usize {
        self.to.len()
    }
    fn send(&self, peer: usize, tag: Tag, words: &[u64]) -> Result<(), Disconnected> {
        self.to.get(peer).ok_or(Disconnected::Worker(peer))?.send((tag, words.to_vec())).map_err(|_| Disconnected::Worker(peer))
    }
    fn try_recv(&self) -> Result<Option<Incoming>, Disconnected> {
        match self.from.try_recv() {
            Ok((peer, (tag, words))) => Ok(Some((peer, tag, words))),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(Disconnected::AllWorkers),
        }
    }
}

impl WorkerTransport for InProcessWorker {
    type Error = Disconnected;
    fn send(&self, tag: Tag, words: &[u64]) -> Result<(), Disconnected> {
        self.to.send((self.peer, (tag, words.to_vec()))).map_err(|_| Disconnected::Root)
    }
    fn try_recv(&self) -> Result<Option<(Tag, Vec<u64>)>, Disconnected> {
        match self.from.try_recv() {
            Ok(frame) => Ok(Some(frame)),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(Disconnected::Root),
        }
    }
}
