//! The MPI transport (feature `mpi`, rsmpi over the system's MPI library): rank 0 is the root,
//! rank `k + 1` is worker `k`. [`MpiRoot`] and [`MpiWorker`] each talk over their own duplicate of
//! the communicator they are given (MPI's context isolation), so the queue's messages never meet
//! the program's own; building them is collective: every rank builds its end at the same point.
//!
//! Also here: [`broadcast_bytes`] (one blob from the root to every rank, e.g. the calibration
//! set), [`node_local_rank`] (the launcher's local rank, else a shared-memory split of the
//! communicator) and [`gather_to_root`]. Waits poll with a back-off, never spin (see
//! [`crate::queue`]).
//!
//! MPI's default error handler is in force: a failed MPI call, or a rank that dies, ends the job.

pub use ::mpi as rsmpi;

use std::convert::Infallible;
use std::time::Duration;

use ::mpi::datatype::Equivalence;
use ::mpi::topology::{Rank, SimpleCommunicator};
use ::mpi::traits::*;

use crate::placement::{local_rank_from_env, PlacementError};
use crate::queue::{Backoff, Incoming, Transport, WorkerTransport};
use crate::wire::Tag;

/// The root's rank.
pub const ROOT: Rank = 0;

/// An end built on the wrong rank or a communicator too small.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MpiSetupError {
    #[error("the queue's root is rank {ROOT}, this is rank {rank}")]
    NotRoot { rank: Rank },
    #[error("rank {ROOT} is the root, it cannot serve as a worker")]
    RootAsWorker,
}

/// The root's end of the MPI transport (rank 0).
pub struct MpiRoot {
    comm: SimpleCommunicator,
}

impl MpiRoot {
    /// Collective with [`MpiWorker::new`] on the other ranks of `comm`.
    pub fn new<C: Communicator>(comm: &C) -> Result<Self, MpiSetupError> {
        let comm = comm.duplicate();
        match comm.rank() {
            ROOT => Ok(MpiRoot { comm }),
            rank => Err(MpiSetupError::NotRoot { rank }),
        }
    }

    /// The queue's communicator (a duplicate of the one given).
    pub fn comm(&self) -> &SimpleCommunicator {
        &self.comm
    }
}

impl Transport for MpiRoot {
    type Error = Infallible;

    fn workers(&self) -> usize {
        self.comm.size() as usize - 1
    }

    fn send(&self, peer: usize, tag: Tag, words: &[u64]) -> Result<(), Infallible> {
        self.comm.process_at_rank(peer as Rank + 1).send_with_tag(words, tag);
        Ok(())
    }

    fn try_recv(&self) -> Result<Option<Incoming>, Infallible> {
        Ok(self.comm.any_process().immediate_matched_probe().map(|probed| {
            let (words, status) = probed.matched_receive_vec::<u64>();
            // Rank 0 cannot message itself here; map it out of range so the queue reports it.
            let peer = (status.source_rank() as usize).checked_sub(1).unwrap_or(usize::MAX);
            (peer, status.tag(), words)
        }))
    }
}

/// A worker's end of the MPI transport (any rank but 0).
pub struct MpiWorker {
    comm: SimpleCommunicator,
}

impl MpiWorker {
    /// Collective with [`MpiRoot::new`] on rank 0 and the other workers.
    pub fn new<C: Communicator>(comm: &C) -> Result<Self, MpiSetupError> {
        let comm = comm.duplicate();
        if comm.rank() == ROOT {
            return Err(MpiSetupError::RootAsWorker);
        }
        Ok(MpiWorker { comm })
    }
}

impl WorkerTransport for MpiWorker {
    type Error = Infallible;

    fn send(&self, tag: Tag, words: &[u64]) -> Result<(), Infallible> {
        self.comm.process_at_rank(ROOT).send_with_tag(words, tag);
        Ok(())
    }

    fn try_recv(&self) -> Result<Option<(Tag, Vec<u64>)>, Infallible> {
        Ok(self.comm.process_at_rank(ROOT).immediate_matched_probe().map(|probed| {
            let (words, status) = probed.matched_receive_vec::<u64>();
            (status.tag(), words)
        }))
    }
}

/// Waits for a non-blocking broadcast by polling, sleeping between polls.
fn ibcast<B>(comm: &impl Communicator, root: Rank, buf: &mut B, backoff: Backoff)
where
    B: ?Sized + ::mpi::datatype::BufferMut,
{
    let root = comm.process_at_rank(root);
    ::mpi::request::scope(|scope| {
        let mut req = root.immediate_broadcast_into(scope, buf);
        let mut wait = Duration::ZERO;
        loop {
            match req.test() {
                Ok(_) => break,
                Err(r) => {
                    req = r;
                    wait = (wait * 2).clamp(backoff.min, backoff.max);
                    std::thread::sleep(wait);
                }
            }
        }
    });
}

/// Broadcasts bytes from `root` (which passes `Some(data)`) to every rank of `comm` (which pass
/// `None`); every rank returns the bytes. Collective; waiting ranks poll with [`Backoff::WORKER`]
/// rather than spin, so ranks that wait for the root's preparation leave the CPU to it.
pub fn broadcast_bytes<C: Communicator>(comm: &C, root: Rank, data: Option<&[u8]>) -> Vec<u8> {
    let mut len = [data.map_or(0, |d| d.len() as u64)];
    ibcast(comm, root, &mut len[..], Backoff::WORKER);
    let mut buf = match data {
        Some(d) => d.to_vec(),
        None => vec![0u8; len[0] as usize],
    };
    // MPI counts are C ints: send in pieces of at most 1 GiB.
    for piece in buf.chunks_mut(1 << 30) {
        ibcast(comm, root, piece, Backoff::WORKER);
    }
    buf
}

/// This rank's number among the ranks of its node: the launcher's local rank if it exported one
/// (see [`crate::placement`]), else its rank in a shared-memory split of `comm` (collective then:
/// every rank of `comm` must call it).
pub fn node_local_rank<C: Communicator>(comm: &C) -> Result<usize, PlacementError> {
    if let Some(r) = local_rank_from_env()? {
        return Ok(r);
    }
    Ok(comm.split_shared(comm.rank()).rank() as usize)
}

/// Every rank's `values` on `root` (one vector per rank, in rank order), `None` elsewhere.
/// Collective; every rank must pass the same number of values.
pub fn gather_to_root<C: Communicator, T: Equivalence + Clone>(comm: &C, root: Rank, values: &[T]) -> Option<Vec<Vec<T>>> {
    let p = comm.process_at_rank(root);
    if comm.rank() == root {
        let mut all: Vec<T> = values.iter().cycle().take(values.len() * comm.size() as usize).cloned().collect();
        p.gather_into_root(values, &mut all[..]);
        Some(if values.is_empty() { vec![Vec::new(); comm.size() as usize] } else { all.chunks(values.len()).map(<[T]>::to_vec).collect() })
    } else {
        p.gather_into(values);
        None
    }
}
