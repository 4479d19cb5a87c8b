//! The outbox: signed compliance reports kept on disk, one file per report named by
//! its zero-padded sequence number, until the server acknowledges them.
//!
//! A report is written (atomically) before it is sent and deleted only when a
//! cumulative `ReportAck` covers it, so nothing is lost across crashes, restarts or
//! lost connections. On every (re)connection the whole outbox is sent in order.
//!
//! The outbox is not capped: dropping a report would hide a state the phone was in.
//! It grows only with real changes of the measured state, because periodic
//! check-ins are not queued while the agent is offline.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use redoubt_proto::SignedEnvelope;

use crate::state::{sync_dir, write_json};

/// A report waiting for its acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Its sequence number.
    pub seq: u64,
    /// The signed report.
    pub report: SignedEnvelope,
}

/// The outbox directory.
#[derive(Debug, Clone)]
pub struct Outbox {
    dir: PathBuf,
}

fn file_name(seq: u64) -> String {
    format!("{seq:020}.json")
}

fn seq_of(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".json")?;
    if digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()
    } else {
        None
    }
}

impl Outbox {
    /// Opens (creating it if needed) the outbox at `dir` and removes what an
    /// interrupted write left behind. A report file that cannot be read is renamed
    /// `*.corrupt` (kept for inspection) so it cannot block the queue.
    pub fn open(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let outbox = Outbox {
            dir: dir.to_owned(),
        };
        for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.ends_with(".tmp") {
                let _ = fs::remove_file(entry.path());
            } else if let Some(seq) = seq_of(&name)
                && outbox.read(seq).is_err()
            {
                tracing::warn!(
                    seq,
                    "outbox report file is unreadable; setting it aside as .corrupt"
                );
                fs::rename(entry.path(), dir.join(format!("{name}.corrupt")))?;
            }
        }
        Ok(outbox)
    }

    /// The outbox at `dir`, for reading only: nothing is created or cleaned up
    /// (used by `status` while an agent may be running).
    pub fn peek(dir: &Path) -> Self {
        Outbox {
            dir: dir.to_owned(),
        }
    }

    fn read(&self, seq: u64) -> Result<SignedEnvelope> {
        let path = self.dir.join(file_name(seq));
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is corrupt", path.display()))
    }

    fn seqs(&self) -> Result<Vec<u64>> {
        let mut seqs: Vec<u64> = fs::read_dir(&self.dir)
            .with_context(|| format!("reading {}", self.dir.display()))?
            .filter_map(|e| e.ok())
            .filter_map(|e| seq_of(&e.file_name().to_string_lossy()))
            .collect();
        seqs.sort_unstable();
        Ok(seqs)
    }

    /// Stores a report durably. Returns once it is on disk.
    pub fn push(&self, seq: u64, report: &SignedEnvelope) -> Result<()> {
        write_json(&self.dir.join(file_name(seq)), report)
    }

    /// Every report not yet acknowledged, in sequence order.
    pub fn pending(&self) -> Result<Vec<Pending>> {
        let mut out = BTreeMap::new();
        for seq in self.seqs()? {
            match self.read(seq) {
                Ok(report) => {
                    out.insert(seq, report);
                }
                // Deleted by a concurrent ack between listing and reading.
                Err(_) if !self.dir.join(file_name(seq)).exists() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out
            .into_iter()
            .map(|(seq, report)| Pending { seq, report })
            .collect())
    }

    /// How many reports wait for an acknowledgement.
    pub fn len(&self) -> Result<usize> {
        Ok(self.seqs()?.len())
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// The highest sequence number in the outbox.
    pub fn highest_seq(&self) -> Result<Option<u64>> {
        Ok(self.seqs()?.last().copied())
    }

    /// Deletes every report with a sequence number up to `seq` (acknowledgements are
    /// cumulative). Returns how many were deleted.
    pub fn ack(&self, seq: u64) -> Result<usize> {
        let mut deleted = 0;
        for s in self.seqs()?.into_iter().take_while(|s| *s <= seq) {
            match fs::remove_file(self.dir.join(file_name(s))) {
                Ok(()) => deleted += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).context("deleting an acknowledged report"),
            }
        }
        if deleted > 0 {
            sync_dir(&self.dir).context("syncing the outbox")?;
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(n: u8) -> SignedEnvelope {
        SignedEnvelope {
            kind: "compliance-report/v1".into(),
            payload: format!("p{n}"),
            signature: format!("s{n}"),
        }
    }

    fn seqs(outbox: &Outbox) -> Vec<u64> {
        outbox
            .pending()
            .unwrap()
            .into_iter()
            .map(|p| p.seq)
            .collect()
    }

    #[test]
    fn pending_is_in_sequence_order_and_acks_are_cumulative() {
        let tmp = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(tmp.path()).unwrap();
        for seq in [10, 2, 9, 100, 1] {
            outbox.push(seq, &report(seq as u8)).unwrap();
        }
        assert_eq!(seqs(&outbox), vec![1, 2, 9, 10, 100]);
        assert_eq!(outbox.pending().unwrap()[3].report, report(10));
        assert_eq!(outbox.ack(9).unwrap(), 3);
        assert_eq!(seqs(&outbox), vec![10, 100]);
        // A duplicate or stale ack changes nothing.
        assert_eq!(outbox.ack(9).unwrap(), 0);
        assert_eq!(outbox.highest_seq().unwrap(), Some(100));
        assert_eq!(outbox.ack(100).unwrap(), 2);
        assert!(outbox.is_empty().unwrap());
    }

    #[test]
    fn reopening_after_a_crash_mid_write_keeps_every_complete_report() {
        let tmp = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(tmp.path()).unwrap();
        outbox.push(1, &report(1)).unwrap();
        outbox.push(2, &report(2)).unwrap();
        // A crash while writing report 3 leaves a partial temporary file, and a
        // damaged disk could leave a truncated report file.
        fs::write(
            tmp.path().join(".00000000000000000003.json.999.tmp"),
            b"{\"kind\": \"compl",
        )
        .unwrap();
        fs::write(tmp.path().join(file_name(4)), b"{\"kind\":").unwrap();
        let outbox = Outbox::open(tmp.path()).unwrap();
        assert_eq!(seqs(&outbox), vec![1, 2]);
        assert_eq!(outbox.pending().unwrap()[1].report, report(2));
        assert!(
            tmp.path()
                .join(format!("{}.corrupt", file_name(4)))
                .exists()
        );
        assert!(
            !tmp.path()
                .join(".00000000000000000003.json.999.tmp")
                .exists()
        );
        outbox.push(5, &report(5)).unwrap();
        assert_eq!(seqs(&Outbox::open(tmp.path()).unwrap()), vec![1, 2, 5]);
    }

    #[test]
    fn foreign_files_are_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("README"), b"x").unwrap();
        let outbox = Outbox::open(tmp.path()).unwrap();
        assert_eq!(outbox.len().unwrap(), 0);
    }
}
