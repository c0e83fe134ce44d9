//! Where a new compute starts, decided from the safekeepers alone, and the
//! new term that fences every older compute.
//!
//! Steps of [`Cluster::elect`] + [`Cluster::establish_term`]:
//! 1. ask every safekeeper of the timeline for its status; fewer than a
//!    quorum of answers is an error naming the silent ones;
//! 2. the donor is the most advanced answer by (last_log_term, flush_lsn);
//!    the start LSN is the end of its last complete record (WAL past it is
//!    an unfinished record, never acknowledged). Any acknowledged commit is
//!    on a quorum, which meets the answering quorum, so the donor holds it;
//! 3. safekeepers behind the donor catch up from it (`POST .../recover`);
//! 4. the term max(term) + 1 starting at the start LSN is written on every
//!    answering safekeeper (cutting WAL past it); a safekeeper still behind
//!    takes the term but may stay behind only if a quorum is at the start LSN.
//!
//! 5. once the compute runs and accepts the replication role
//!    ([`Cluster::await_streaming`]): the same spec again wakes every
//!    safekeeper from its reconnect backoff, and the start waits until a
//!    quorum of the new term holds all WAL the compute has flushed — what
//!    the start committed locally (the roles) is durable before anyone is
//!    told the compute is up, and the first client commit does not wait
//!    for a safekeeper's next retry.
//!
//! Nothing is changed before step 3, so a failed step 1 or 2 leaves the
//! safekeepers untouched. Cancellation: dropping the future between steps
//! is safe (each HTTP call is idempotent); the term is only ever raised.

use anyhow::{bail, Context};
use serde_json::{json, Value};
use utils::id::{TenantId, TimelineId};
use utils::lsn::Lsn;

use crate::api::{field, Api};
use crate::cluster::Cluster;
use crate::config::SafekeeperConf;

/// One safekeeper's answer.
#[derive(Clone, Debug)]
pub struct Answer {
    pub id: u64,
    pub term: u64,
    pub last_log_term: u64,
    pub flush_lsn: Lsn,
    pub last_record_lsn: Lsn,
    pub commit_lsn: Lsn,
    /// WAL offloaded to remote storage (None from a safekeeper without it).
    pub backup_lsn: Option<Lsn>,
    /// Why its acceptor last failed to follow the compute, if it did.
    pub acceptor_error: Option<String>,
}

impl Answer {
    fn parse(id: u64, v: &Value) -> anyhow::Result<Answer> {
        Ok(Answer {
            id,
            term: field(v, "term")?,
            last_log_term: field(v, "last_log_term").unwrap_or(0),
            flush_lsn: field(v, "flush_lsn")?,
            last_record_lsn: field(v, "last_record_lsn").or_else(|_| field(v, "flush_lsn"))?,
            commit_lsn: field(v, "commit_lsn")?,
            backup_lsn: if v["backup"].is_object() { field(v, "backup_lsn").ok() } else { None },
            acceptor_error: v["acceptor"]["last_error"].as_str().map(str::to_string),
        })
    }
    fn position(&self) -> (u64, Lsn) {
        (self.last_log_term, self.last_record_lsn)
    }
}

/// The outcome of asking the safekeepers.
#[derive(Clone, Debug)]
pub struct Election {
    pub start_lsn: Lsn,
    /// The new term.
    pub term: u64,
    pub donor: u64,
    pub answers: Vec<Answer>,
}

fn sk_timeline_url(sk: &SafekeeperConf, t: TenantId, tl: TimelineId) -> String {
    format!("{}/v1/tenant/{t}/timeline/{tl}", sk.at.http(sk.http_port))
}

impl Cluster {
    /// Every safekeeper's status of a timeline: answers, and who did not answer (with why).
    pub async fn ask_safekeepers(&self, api: &Api, t: TenantId, tl: TimelineId) -> (Vec<Answer>, Vec<String>) {
        let (mut answers, mut silent) = (Vec::new(), Vec::new());
        for sk in &self.conf.safekeepers {
            let got = api.get(&sk_timeline_url(sk, t, tl)).await.and_then(|v| Answer::parse(sk.id, &v));
            match got {
                Ok(a) => answers.push(a),
                Err(e) => silent.push(format!("safekeeper {} ({e:#})", sk.id)),
            }
        }
        (answers, silent)
    }

    /// Steps 1 and 2: the start LSN and the new term. Changes nothing.
    pub async fn elect(&self, api: &Api, t: TenantId, tl: TimelineId) -> anyhow::Result<Election> {
        let (answers, silent) = self.ask_safekeepers(api, t, tl).await;
        let quorum = self.conf.safekeepers.len() / 2 + 1;
        if answers.len() < quorum {
            bail!("only {} of {} safekeepers answer, a quorum of {quorum} is needed; not answering: {}", answers.len(), self.conf.safekeepers.len(), silent.join(", "));
        }
        let donor = answers.iter().max_by_key(|a| a.position()).context("no answers")?.clone();
        let term = answers.iter().map(|a| a.term).max().unwrap_or(0) + 1;
        Ok(Election { start_lsn: donor.last_record_lsn, term, donor: donor.id, answers })
    }

    /// Steps 3 and 4: catch up who is behind, then write the new term for
    /// the compute at `conninfo`.
    pub async fn establish_term(&self, api: &Api, t: TenantId, tl: TimelineId, e: &Election, conninfo: &str) -> anyhow::Result<()> {
        let donor = self.conf.safekeepers.iter().find(|s| s.id == e.donor).context("donor safekeeper not configured")?;
        let target = (e.answers.iter().find(|a| a.id == e.donor).map(Answer::position)).context("donor answer")?;
        for a in e.answers.iter().filter(|a| a.position() < target) {
            let sk = self.conf.safekeepers.iter().find(|s| s.id == a.id).context("safekeeper not configured")?;
            let body = json!({
                "peer_id": donor.id,
                "pg_addr": donor.at.addr(donor.pg_port),
                "http_addr": donor.at.addr(donor.http_port),
                "up_to": e.start_lsn,
            });
            if let Err(err) = api.post(&format!("{}/recover", sk_timeline_url(sk, t, tl)), &body).await {
                eprintln!("warning: safekeeper {} could not catch up from safekeeper {}: {err:#}", a.id, donor.id);
            }
        }
        let spec = Self::compute_spec(e, conninfo);
        let mut at_start = Vec::new();
        for a in &e.answers {
            let sk = self.conf.safekeepers.iter().find(|s| s.id == a.id).context("safekeeper not configured")?;
            match api.put(&format!("{}/compute", sk_timeline_url(sk, t, tl)), &spec).await {
                Ok(status) if field::<Lsn>(&status, "flush_lsn").is_ok_and(|f| f >= e.start_lsn) => at_start.push(a.id),
                Ok(_) => eprintln!("warning: safekeeper {} took term {} but is behind {}; it catches up from its peers", a.id, e.term, e.start_lsn),
                Err(err) => eprintln!("warning: safekeeper {}: {err:#}", a.id),
            }
        }
        let quorum = self.conf.safekeepers.len() / 2 + 1;
        if at_start.len() < quorum {
            bail!("only safekeepers {at_start:?} hold WAL up to the start LSN {}; a quorum of {quorum} is needed", e.start_lsn);
        }
        Ok(())
    }

    fn compute_spec(e: &Election, conninfo: &str) -> Value {
        json!({ "conninfo": conninfo, "term": e.term, "start_lsn": e.start_lsn })
    }

    /// Step 5: wake the safekeepers (the compute now accepts them) and wait,
    /// at most [`STREAMING_TIMEOUT`], until a quorum on term `e.term` holds
    /// the compute's WAL up to `flush_lsn`. The error names what each
    /// safekeeper's acceptor last reported.
    pub async fn await_streaming(&self, api: &Api, t: TenantId, tl: TimelineId, e: &Election, conninfo: &str, flush_lsn: Lsn) -> anyhow::Result<()> {
        let spec = Self::compute_spec(e, conninfo);
        for sk in self.conf.safekeepers.iter().filter(|s| e.answers.iter().any(|a| a.id == s.id)) {
            // A safekeeper that does not answer now is not waited for below.
            let _ = api.put(&format!("{}/compute", sk_timeline_url(sk, t, tl)), &spec).await;
        }
        let quorum = self.conf.safekeepers.len() / 2 + 1;
        let started = std::time::Instant::now();
        loop {
            let (answers, silent) = self.ask_safekeepers(api, t, tl).await;
            let holding = answers.iter().filter(|a| a.term == e.term && a.flush_lsn >= flush_lsn).count();
            if holding >= quorum {
                return Ok(());
            }
            if started.elapsed() > STREAMING_TIMEOUT {
                let mut why: Vec<String> = answers
                    .iter()
                    .map(|a| format!("safekeeper {} at {} (term {}): {}", a.id, a.flush_lsn, a.term, a.acceptor_error.as_deref().unwrap_or("no error")))
                    .collect();
                why.extend(silent);
                bail!("fewer than {quorum} safekeepers hold the compute's WAL up to {flush_lsn} after {STREAMING_TIMEOUT:?}; {}", why.join("; "));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// How long a starting compute may take to be followed by a quorum.
pub const STREAMING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    fn a(id: u64, last_log_term: u64, rec: u64) -> Answer {
        Answer { id, term: last_log_term, last_log_term, flush_lsn: Lsn(rec + 8), last_record_lsn: Lsn(rec), commit_lsn: Lsn(0), backup_lsn: None, acceptor_error: None }
    }

    #[test]
    fn the_newest_term_wins_over_more_wal() {
        let answers = [a(1, 2, 900), a(2, 3, 500), a(3, 3, 400)];
        let best = answers.iter().max_by_key(|a| a.position()).unwrap();
        assert_eq!(best.id, 2);
    }
}
