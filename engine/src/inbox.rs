//! The admins' inbox: things a person must do that no run is waiting on, such as a tenant whose
//! delegated access Microsoft refused for good (`reconsent_needed`).
//!
//! One item per (kind, company): posting again replaces it (a tenant that keeps failing is one
//! item, with the latest error), and reconnecting the tenant clears it. Items live in the
//! `{inbox}` slot: a hash of id → JSON and a sorted set by time.

use std::collections::HashMap;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use steward_schemas::{CompanyId, Timestamp};

use crate::clock::Clock;
use crate::db::Db;

/// An item of the admins' inbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct InboxItem {
    /// Its id (`reconsent_needed:<company>`).
    pub id: String,
    /// What kind of item: `reconsent_needed`.
    pub kind: String,
    /// The company it is about.
    pub company: CompanyId,
    /// What happened, in a sentence.
    pub message: String,
    /// What to do.
    pub fix: String,
    /// When it was posted (last).
    pub at: Timestamp,
}

/// The inbox on Redis. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Inbox {
    db: Db,
    ns: String,
    clock: Arc<dyn Clock>,
}

impl Inbox {
    /// The inbox of namespace `ns`.
    pub fn new(db: Db, ns: &str, clock: Arc<dyn Clock>) -> Self {
        Self {
            db,
            ns: ns.to_owned(),
            clock,
        }
    }

    /// Beside `store`'s runs.
    pub fn for_store(store: &crate::store::Store) -> Self {
        Self::new(
            store.db().clone(),
            store.keys().namespace(),
            store.clock().clone(),
        )
    }

    fn items_key(&self) -> String {
        format!("{}:{{inbox}}:items", self.ns)
    }

    fn order_key(&self) -> String {
        format!("{}:{{inbox}}:order", self.ns)
    }

    /// Posts (or replaces) an item.
    pub async fn post(&self, item: &InboxItem) -> redis::RedisResult<()> {
        let text = serde_json::to_string(item).expect("an inbox item serialises");
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset(self.items_key(), &item.id, text)
            .ignore()
            .zadd(self.order_key(), &item.id, item.at.as_millis())
            .ignore();
        self.db.pipe(&pipe).await
    }

    /// Posts that `company`'s tenant needs consent again.
    pub async fn post_reconsent(
        &self,
        company: &str,
        tenant: &str,
        code: &str,
        message: &str,
    ) -> redis::RedisResult<()> {
        let Ok(id) = company.parse::<CompanyId>() else {
            return Ok(());
        };
        self.post(&InboxItem {
            id: format!("reconsent_needed:{company}"),
            kind: "reconsent_needed".to_owned(),
            company: id,
            message: format!(
                "Microsoft refused the delegated access of company {company}'s tenant {tenant} for good ({code}): {message}"
            ),
            fix: format!(
                "have an administrator of the tenant consent again: steward tenants connect {company}; runs that need the tenant fail until then"
            ),
            at: self.clock.now(),
        })
        .await
    }

    /// Removes an item; whether it was there.
    pub async fn dismiss(&self, id: &str) -> redis::RedisResult<bool> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hdel(self.items_key(), id)
            .zrem(self.order_key(), id)
            .ignore();
        let (n,): (u64,) = self.db.pipe(&pipe).await?;
        Ok(n > 0)
    }

    /// Every item, newest first.
    pub async fn list(&self) -> redis::RedisResult<Vec<InboxItem>> {
        let ids: Vec<String> = self
            .db
            .query(redis::cmd("ZREVRANGE").arg(self.order_key()).arg(0).arg(-1))
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let all: HashMap<String, String> = self
            .db
            .query(redis::cmd("HGETALL").arg(self.items_key()))
            .await?;
        Ok(ids
            .iter()
            .filter_map(|id| all.get(id))
            .filter_map(|t| serde_json::from_str(t).ok())
            .collect())
    }
}
