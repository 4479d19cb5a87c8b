//! Group commit of compliance reports: every device session verifies its phone's
//! signature itself (on any core), then hands the report to the one [`ReportBatcher`]
//! task, which stores whatever is waiting (up to [`MAX_BATCH`]) in one transaction,
//! one fsync and one signed audit head, and only then answers each session; the
//! session acknowledges to the phone after that. A report whose batch failed is not
//! acknowledged, so the phone keeps it in its outbox and sends it again.

use std::sync::Arc;

use redoubt_proto::PolicyBundle;
use redoubt_proto::{Compliance, ComplianceReport, SignedEnvelope, Timestamp};
use redoubt_store::ReportStored;
use tokio::sync::{mpsc, oneshot};

use crate::app::{App, verdict};
use crate::error::ServiceError;

/// Most reports one transaction stores.
pub const MAX_BATCH: usize = 1_000;

/// What a session waits for: the report's outcome, the commands it verified, and the
/// device as the batch found it.
pub type Stored = Result<ReportStored, ServiceError>;

/// One report on its way to the database.
#[derive(Debug)]
pub struct Job {
    report: ComplianceReport,
    envelope: SignedEnvelope,
    reply: oneshot::Sender<Stored>,
}

/// The sending side, held by the [`App`].
#[derive(Debug, Clone)]
pub struct ReportBatcher {
    jobs: mpsc::Sender<Job>,
}

impl ReportBatcher {
    /// A batcher and the receiver its task ([`ReportBatcher::run`]) drains.
    pub fn new() -> (ReportBatcher, mpsc::Receiver<Job>) {
        let (jobs, rx) = mpsc::channel(4 * MAX_BATCH);
        (ReportBatcher { jobs }, rx)
    }

    /// Stores a verified report with the next batch; answers once that batch committed.
    pub async fn store(&self, report: ComplianceReport, envelope: SignedEnvelope) -> Stored {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job {
                report,
                envelope,
                reply,
            })
            .await
            .map_err(|_| ServiceError::Unavailable("the server is stopping".into()))?;
        answer
            .await
            .map_err(|_| ServiceError::Unavailable("the server is stopping".into()))?
    }

    /// Drains the queue in batches until the server shuts down.
    pub async fn run(app: Arc<App>, mut rx: mpsc::Receiver<Job>) {
        let mut shutdown = app.shutdown.clone();
        loop {
            let first = tokio::select! {
                job = rx.recv() => match job {
                    Some(j) => j,
                    None => return,
                },
                _ = shutdown.changed() => return,
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(j) => batch.push(j),
                    Err(_) => break,
                }
            }
            store_batch(&app, batch).await;
        }
    }
}

async fn store_batch(app: &App, batch: Vec<Job>) {
    let now = Timestamp::now();
    let inputs: Vec<(&ComplianceReport, &SignedEnvelope)> =
        batch.iter().map(|j| (&j.report, &j.envelope)).collect();
    let result = app
        .store
        .record_reports(
            &inputs,
            now,
            // The server's own stored bundle: parsed, not verified again (two
            // signature checks per report would cost more than the write).
            |dev, report| match dev.bundle.open_own::<PolicyBundle>(PolicyBundle::KIND) {
                Ok(bundle) => verdict(redoubt_policy::evaluate(&bundle, report, now)),
                Err(e) => (
                    Compliance::NonCompliant,
                    vec![format!("stored bundle of {} unreadable: {e}", dev.id)],
                ),
            },
            crate::commands::judge,
            &|h| app.sign_audit_head(h),
        )
        .await;
    metrics::histogram!("redoubt_report_batch_size").record(batch.len() as f64);
    match result {
        Ok(outcomes) => {
            for (job, outcome) in batch.into_iter().zip(outcomes) {
                let _ = job.reply.send(outcome.map_err(ServiceError::from));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, reports = batch.len(), "storing a batch of reports failed; the phones will send them again");
            for job in batch {
                let _ = job.reply.send(Err(ServiceError::Unavailable(format!(
                    "storing the report failed: {e}"
                ))));
            }
        }
    }
}
