//! Plain reads of the saga state: one reservation, a user's reservations, the due parts of the
//! recovery and hold indexes (per slot group). Reads never change state, except that ids of expired reservations
//! are dropped from a user's index (through `unindex.lua`).

use std::collections::HashMap;

use super::{Inventory, InventoryError};
use crate::reservations::keys;
use crate::reservations::model::SagaRecord;
use crate::slots::{Group, GROUPS};

/// A user's newest reservations.
#[derive(Debug, Clone)]
pub struct UserReservations {
    /// Newest first.
    pub records: Vec<SagaRecord>,
    /// Index entries dropped because their reservation had expired.
    pub pruned: usize,
}

/// Most index pages read for one listing (each page is the wanted count): bounds the work a user
/// with many expired reservations costs.
const MAX_LIST_PAGES: usize = 5;

impl Inventory {
    /// Reads one reservation (hash + history) in one round trip. `Ok(None)` if it does not exist.
    pub async fn load(&self, res_id: &str) -> Result<Option<SagaRecord>, InventoryError> {
        let mut p = redis::pipe();
        p.cmd("HGETALL")
            .arg(keys::reservation(res_id))
            .cmd("LRANGE")
            .arg(keys::history(res_id))
            .arg(0)
            .arg(-1);
        let (fields, history): (HashMap<String, String>, Vec<String>) =
            self.store.pipeline(&p).await?;
        record(res_id, fields, history)
    }

    /// Reads several reservations of one slot group in one round trip (a pipeline must stay in
    /// one slot on a cluster); `None` where one does not exist.
    async fn load_group(&self, ids: &[String]) -> Result<Vec<Option<SagaRecord>>, InventoryError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut p = redis::pipe();
        for id in ids {
            p.cmd("HGETALL")
                .arg(keys::reservation(id))
                .cmd("LRANGE")
                .arg(keys::history(id))
                .arg(0)
                .arg(-1);
        }
        let raw: Vec<(HashMap<String, String>, Vec<String>)> = self.store.pipeline(&p).await?;
        ids.iter()
            .zip(raw)
            .map(|(id, (fields, history))| record(id, fields, history))
            .collect()
    }

    /// A user's newest `limit` reservations over every slot group (read concurrently, merged
    /// by creation time). Ids whose reservation expired (ended without a sale, past the unsold
    /// TTL) are dropped from the index on the way.
    pub async fn user_reservations(
        &self,
        email: &str,
        limit: usize,
    ) -> Result<UserReservations, InventoryError> {
        let email = email.to_ascii_lowercase();
        let per_group =
            (0..GROUPS).map(|g| self.user_reservations_in(keys::user_index(g, &email), limit));
        let mut out = UserReservations {
            records: Vec::with_capacity(limit),
            pruned: 0,
        };
        for part in futures::future::join_all(per_group).await {
            let part = part?;
            out.records.extend(part.records);
            out.pruned += part.pruned;
        }
        // Newest first; RFC 3339 times of one format sort as text.
        out.records
            .sort_by(|a, b| b.view.created_at.cmp(&a.view.created_at));
        out.records.truncate(limit);
        Ok(out)
    }

    /// [`Inventory::user_reservations`] within one group's index.
    async fn user_reservations_in(
        &self,
        index: String,
        limit: usize,
    ) -> Result<UserReservations, InventoryError> {
        let mut out = UserReservations {
            records: Vec::with_capacity(limit),
            pruned: 0,
        };
        // Expired ids are removed before the next page is read, so each page starts at 0.
        for _ in 0..MAX_LIST_PAGES {
            let want = limit - out.records.len();
            let start = out.records.len();
            let mut cmd = redis::cmd("ZREVRANGE");
            cmd.arg(&index).arg(start).arg(start + want - 1);
            let ids: Vec<String> = self.store.query(&cmd).await?;
            let page = self.load_group(&ids).await?;
            let expired: Vec<String> = ids
                .iter()
                .zip(&page)
                .filter(|(_, r)| r.is_none())
                .map(|(id, _)| id.clone())
                .collect();
            out.records.extend(page.into_iter().flatten());
            if !expired.is_empty() {
                self.unindex(&index, &expired).await?;
                out.pruned += expired.len();
            }
            if expired.is_empty() || ids.len() < want {
                break;
            }
        }
        Ok(out)
    }

    /// Up to `limit` sagas of group `g` due for recovery at `now_ms` (their lease has run out),
    /// oldest first.
    pub async fn due_sagas(
        &self,
        g: Group,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<String>, InventoryError> {
        self.due(&keys::sagas(g), now_ms, limit).await
    }

    /// Up to `limit` holds of group `g` past their deadline at `now_ms`, as `(event id,
    /// reservation id)` index members (see [`keys::split_hold_member`]).
    pub async fn due_holds(
        &self,
        g: Group,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<String>, InventoryError> {
        self.due(&keys::holds(g), now_ms, limit).await
    }

    async fn due(
        &self,
        key: &str,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<String>, InventoryError> {
        let mut cmd = redis::cmd("ZRANGEBYSCORE");
        cmd.arg(key)
            .arg("-inf")
            .arg(now_ms)
            .arg("LIMIT")
            .arg(0)
            .arg(limit);
        Ok(self.store.query(&cmd).await?)
    }
}

/// A reservation from its hash and history; `None` for an empty hash, an error for a hash this
/// version cannot read (an unknown status, say).
fn record(
    res_id: &str,
    fields: HashMap<String, String>,
    history: Vec<String>,
) -> Result<Option<SagaRecord>, InventoryError> {
    if fields.is_empty() {
        return Ok(None);
    }
    SagaRecord::from_fields(fields, history)
        .map(Some)
        .map_err(|why| InventoryError::UnexpectedReply {
            script: "read",
            reply: vec![res_id.to_owned(), why],
        })
}
