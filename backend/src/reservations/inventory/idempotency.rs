//! `Idempotency-Key` records across shards: the record lives on its key's own slot, the saga on
//! its event's, so a request claims the key first, holds second, and writes its outcome back
//! third. The protocol and why it keeps SPEC §5's rules is in `idem_claim.lua`.

use super::{keys, HoldOutcome, HoldTiming, IdempotencyRecord, Inventory, InventoryError};
use super::{unexpected, IDEMPOTENCY_TTL_SECS};
use crate::reservations::model::Failure;

/// What a finished request leaves in its record.
#[derive(Debug, Clone, Copy)]
pub(super) enum IdemEnd<'a> {
    /// 201 with this body.
    Created(&'a str),
    /// This failure, with its detail.
    Failed(Failure, &'a str),
}

/// What `idem_claim.lua` answered.
enum ClaimReply {
    Claimed,
    Reused,
    Record(IdempotencyRecord),
}

impl Inventory {
    /// Claims `key` for `res_id`. `None`: claimed, go on and hold. `Some(answer)`: the key was
    /// used before (another body, or a replay to answer from its record).
    pub(super) async fn claim_key(
        &self,
        key: &str,
        fingerprint: &str,
        res_id: &str,
        t: &HoldTiming<'_>,
    ) -> Result<Option<HoldOutcome>, InventoryError> {
        let rec = match self.claim_script(key, fingerprint, res_id, t, "").await? {
            ClaimReply::Claimed => return Ok(None),
            ClaimReply::Reused => return Ok(Some(HoldOutcome::IdempotencyReused)),
            ClaimReply::Record(rec) => rec,
        };
        // A stale claim whose saga never came to be: hold.lua refuses after the first request's
        // deadline, so it never will. Take the key over for this request.
        if rec.stale && !rec.res_id.is_empty() && self.load(&rec.res_id).await?.is_none() {
            tracing::info!(reservation = %rec.res_id, "idempotency claim abandoned by a dead request; taken over");
            return match self
                .claim_script(key, fingerprint, res_id, t, &rec.res_id)
                .await?
            {
                ClaimReply::Claimed => Ok(None),
                ClaimReply::Reused => Ok(Some(HoldOutcome::IdempotencyReused)),
                ClaimReply::Record(rec) => Ok(Some(HoldOutcome::Replay(rec))),
            };
        }
        Ok(Some(HoldOutcome::Replay(rec)))
    }

    async fn claim_script(
        &self,
        key: &str,
        fingerprint: &str,
        res_id: &str,
        t: &HoldTiming<'_>,
        take_over: &str,
    ) -> Result<ClaimReply, InventoryError> {
        let keys = [keys::idempotency(key)];
        let args = [
            fingerprint.to_owned(),
            res_id.to_owned(),
            IDEMPOTENCY_TTL_SECS.to_string(),
            t.stale_claim_ms.to_string(),
            take_over.to_owned(),
        ];
        let reply = self.run(&self.scripts.idem_claim, &keys, &args).await?;
        parse_claim(reply)
    }

    /// Writes a request's outcome into its record. Best effort: until it is written a replay
    /// answers from the saga the record names, so a failure here is only logged.
    pub(super) async fn finish_key(&self, key: &str, res_id: &str, end: IdemEnd<'_>) {
        let (status, body, err, detail) = match end {
            IdemEnd::Created(body) => ("201", body, "", ""),
            IdemEnd::Failed(failure, detail) => ("", "", failure.as_str(), detail),
        };
        let keys = [keys::idempotency(key)];
        let args = [
            res_id.to_owned(),
            IDEMPOTENCY_TTL_SECS.to_string(),
            status.to_owned(),
            body.to_owned(),
            err.to_owned(),
            detail.to_owned(),
        ];
        let written: Result<i64, _> = self
            .store
            .invoke_script(&self.scripts.idem_finish, &keys, &args)
            .await;
        if let Err(e) = written {
            tracing::warn!(reservation = %res_id, error = %e, "idempotency record not finished; replays answer from the saga");
        }
    }
}

fn parse_claim(reply: Vec<String>) -> Result<ClaimReply, InventoryError> {
    let tags: Vec<&str> = reply.iter().map(String::as_str).collect();
    match tags.as_slice() {
        ["claimed"] => Ok(ClaimReply::Claimed),
        ["reused"] => Ok(ClaimReply::Reused),
        ["record", state, res_id, err, detail, status, body, stale @ ("0" | "1")] => {
            Ok(ClaimReply::Record(IdempotencyRecord {
                state: (*state).to_owned(),
                res_id: (*res_id).to_owned(),
                err: (*err).to_owned(),
                detail: (*detail).to_owned(),
                status: (*status).to_owned(),
                body: (*body).to_owned(),
                stale: *stale == "1",
            }))
        }
        _ => Err(unexpected("idem_claim", &reply)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn claim_replies_parse_exactly() {
        assert!(matches!(
            parse_claim(v(&["claimed"])),
            Ok(ClaimReply::Claimed)
        ));
        assert!(matches!(
            parse_claim(v(&["reused"])),
            Ok(ClaimReply::Reused)
        ));
        let rec = parse_claim(v(&["record", "running", "r1", "", "", "", "", "1"]));
        assert!(matches!(rec, Ok(ClaimReply::Record(r)) if r.stale && r.res_id == "r1"));
        assert!(parse_claim(v(&["record", "running", "r1", "", "", "", "", "x"])).is_err());
        assert!(parse_claim(v(&["idem"])).is_err());
    }
}
