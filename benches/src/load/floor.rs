//! The floor under a single client's put: what the disk and loopback alone cost, measured on
//! this machine. A put acknowledged by a 3-member cluster needs at least one fdatasync on the
//! leader, one on a follower and round trips client → leader and leader → follower. The issue
//! that asks for it counts them one after the other (`sequential`); with the leader's
//! persist overlapping its replication, as raft allows, the floor is two round trips and one
//! fdatasync (`overlapped`).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use super::stats::percentile;

/// Medians and 99th percentiles, in microseconds.
#[derive(Debug)]
pub struct Floor {
    pub fdatasync_p50_us: f64,
    pub fdatasync_p99_us: f64,
    pub rtt_p50_us: f64,
    pub rtt_p99_us: f64,
}

impl Floor {
    /// Two fdatasyncs and two round trips, one after the other (p50s).
    pub fn sequential_us(&self) -> f64 {
        2.0 * self.fdatasync_p50_us + 2.0 * self.rtt_p50_us
    }

    /// One fdatasync and two round trips: the leader's persist overlaps the follower's (p50s).
    pub fn overlapped_us(&self) -> f64 {
        self.fdatasync_p50_us + 2.0 * self.rtt_p50_us
    }
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1e3
}

/// Appends `samples` records of `record_bytes` to a file in `dir`, each followed by
/// `fdatasync`, and bounces `samples` 64-byte messages over a loopback TCP connection.
pub fn measure(dir: &Path, samples: usize, record_bytes: usize) -> std::io::Result<Floor> {
    let path = dir.join(format!(".strata-floor-{}", std::process::id()));
    let synced = (|| {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)?;
        let record = vec![0x5a; record_bytes];
        let mut times = Vec::with_capacity(samples);
        for _ in 0..samples {
            let start = Instant::now();
            file.write_all(&record)?;
            file.sync_data()?;
            times.push(start.elapsed().as_nanos() as u64);
        }
        Ok::<_, std::io::Error>(times)
    })();
    let _ = std::fs::remove_file(&path);
    let mut synced = synced?;
    synced.sort_unstable();

    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut peer, _) = listener.accept()?;
        peer.set_nodelay(true)?;
        let mut buf = [0u8; 64];
        loop {
            match peer.read_exact(&mut buf) {
                Ok(()) => peer.write_all(&buf)?,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    });
    let mut client = TcpStream::connect(addr)?;
    client.set_nodelay(true)?;
    client.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = [0u8; 64];
    let mut trips = Vec::with_capacity(samples);
    for _ in 0..samples {
        let start = Instant::now();
        client.write_all(&buf)?;
        client.read_exact(&mut buf)?;
        trips.push(start.elapsed().as_nanos() as u64);
    }
    drop(client);
    echo.join()
        .map_err(|_| std::io::Error::other("the echo thread panicked"))??;
    trips.sort_unstable();

    Ok(Floor {
        fdatasync_p50_us: us(percentile(&synced, 50.0)),
        fdatasync_p99_us: us(percentile(&synced, 99.0)),
        rtt_p50_us: us(percentile(&trips, 50.0)),
        rtt_p99_us: us(percentile(&trips, 99.0)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_a_disk_and_loopback() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = measure(dir.path(), 20, 512).expect("measure");
        assert!(f.fdatasync_p50_us > 0.0 && f.rtt_p50_us > 0.0, "{f:?}");
        assert!(f.sequential_us() > f.overlapped_us());
        assert!(
            std::fs::read_dir(dir.path()).expect("dir").next().is_none(),
            "the probe file is removed"
        );
    }
}
