//! PSA accounts: how Steward checks a PSA's webhooks and writes notes back to it. Secrets (the
//! webhook secret, the API secret and integration code) are sealed with the installation's
//! keyring before they reach Redis, and never leave the server again: views say only whether
//! each is set.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use steward_schemas::company::PsaProvider;
use steward_secrets::{Context, Keyring, Secret};

/// Who sees Steward's ticket notes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NoteVisibility {
    /// Technicians only (Autotask internal note, ConnectWise internal analysis, Halo hidden
    /// from the user).
    #[default]
    Internal,
    /// The customer too.
    Customer,
}

/// A PSA account as a technician gives it (`PUT /v1/psa/accounts/{id}`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountInput {
    /// Which PSA.
    pub provider: PsaProvider,
    /// The webhook's secret: Autotask's `SecretKey` (HMAC key); Halo's Basic password or
    /// Bearer token. ConnectWise needs none (its callbacks are checked with the key its own
    /// site serves).
    #[serde(default)]
    pub webhook_secret: Option<String>,
    /// Halo only: the Basic username configured on the webhook (absent: Bearer).
    #[serde(default)]
    pub webhook_username: Option<String>,
    /// The PSA's REST base URL (Autotask `https://webservicesN.autotask.net/atservicesrest/v1.0`,
    /// ConnectWise `https://SITE/v4_6_release/apis/3.0`, Halo `https://X.halopsa.com`). For
    /// ConnectWise it is also the only site a callback's signing key may come from.
    #[serde(default)]
    pub api_url: Option<String>,
    /// Autotask `UserName`; ConnectWise `company+publicKey`; Halo `client_id`.
    #[serde(default)]
    pub api_username: Option<String>,
    /// Autotask `Secret`; ConnectWise private key; Halo `client_secret`.
    #[serde(default)]
    pub api_secret: Option<String>,
    /// Autotask `ApiIntegrationCode`; ConnectWise `clientId`; Halo tenant (optional).
    #[serde(default)]
    pub api_integration_code: Option<String>,
    /// Who sees the notes.
    #[serde(default)]
    pub note_visibility: NoteVisibility,
    /// Deliveries whose event is older than this are refused (default one hour).
    #[serde(default)]
    pub max_event_age_seconds: Option<u32>,
}

/// An account as stored: secrets sealed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stored {
    /// The account's id.
    pub id: String,
    /// Which PSA.
    pub provider: PsaProvider,
    /// Sealed.
    pub webhook_secret: Option<String>,
    /// Halo Basic username.
    pub webhook_username: Option<String>,
    /// REST base URL.
    pub api_url: Option<String>,
    /// The API user.
    pub api_username: Option<String>,
    /// Sealed.
    pub api_secret: Option<String>,
    /// Sealed.
    pub api_integration_code: Option<String>,
    /// Who sees notes.
    pub note_visibility: NoteVisibility,
    /// Freshness limit.
    pub max_event_age_seconds: u32,
}

/// An account as shown: no secret, only whether each is set.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct AccountView {
    /// The account's id.
    pub id: String,
    /// Which PSA.
    pub provider: PsaProvider,
    /// Whether a webhook secret is stored.
    pub webhook_secret_set: bool,
    /// Halo Basic username.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_username: Option<String>,
    /// REST base URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
    /// The API user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_username: Option<String>,
    /// Whether the API secret is stored.
    pub api_secret_set: bool,
    /// Whether the integration code is stored.
    pub api_integration_code_set: bool,
    /// Who sees notes.
    pub note_visibility: NoteVisibility,
    /// Freshness limit.
    pub max_event_age_seconds: u32,
    /// Where the PSA should deliver webhooks.
    pub webhook_path: String,
}

/// A problem with an account as given: the field and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The field.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub fix: String,
}

fn cx(id: &str, field: &str) -> Context {
    Context::new("psa-account", &[id, field])
}

/// The webhook path of a provider.
pub fn hook_path(provider: PsaProvider, id: &str) -> String {
    let name = match provider {
        PsaProvider::Autotask => "autotask",
        PsaProvider::Connectwise => "connectwise",
        PsaProvider::Halopsa => "halo",
    };
    format!("/v1/hooks/{name}?account={id}")
}

/// Whether an account id is usable: 1–64 of `a-z 0-9 - _`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

impl Stored {
    /// Checks and seals what a technician gave.
    pub fn seal(id: &str, input: AccountInput, ring: &Keyring) -> Result<Self, Invalid> {
        let bad = |field, message: &str, fix: &str| Invalid {
            field,
            message: message.to_owned(),
            fix: fix.to_owned(),
        };
        if !valid_id(id) {
            return Err(bad(
                "id",
                "not a usable account id",
                "use 1-64 of a-z, 0-9, - and _",
            ));
        }
        let nonempty = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.trim().is_empty());
        match input.provider {
            PsaProvider::Autotask if !nonempty(&input.webhook_secret) => {
                return Err(bad(
                    "webhook_secret",
                    "Autotask webhooks are signed with the webhook's SecretKey, and none was given",
                    "give the SecretKey you set on the TicketWebhooks entity (at most 64 characters)",
                ));
            }
            PsaProvider::Connectwise if !nonempty(&input.api_url) => {
                return Err(bad(
                    "api_url",
                    "ConnectWise callbacks are checked with a key fetched from the callback's key_url, which must be on your site, and no site was given",
                    "give your site's API base, e.g. https://na.myconnectwise.net/v4_6_release/apis/3.0",
                ));
            }
            PsaProvider::Halopsa if !nonempty(&input.webhook_secret) => {
                return Err(bad(
                    "webhook_secret",
                    "Halo webhooks are authenticated with the Basic password or Bearer token configured on the webhook, and none was given",
                    "give the password (with webhook_username) or the bearer token",
                ));
            }
            _ => {}
        }
        if let Some(u) = &input.api_url
            && url::Url::parse(u).map_or(true, |p| !matches!(p.scheme(), "http" | "https"))
        {
            return Err(bad(
                "api_url",
                "not an http(s) URL",
                "give the full URL, starting https://",
            ));
        }
        let seal = |field: &str, v: Option<String>| {
            v.filter(|s| !s.is_empty())
                .map(|s| ring.seal(&Secret::new(s), &cx(id, field)))
        };
        Ok(Self {
            id: id.to_owned(),
            provider: input.provider,
            webhook_secret: seal("webhook_secret", input.webhook_secret),
            webhook_username: input.webhook_username.filter(|s| !s.is_empty()),
            api_url: input.api_url.map(|u| u.trim_end_matches('/').to_owned()),
            api_username: input.api_username,
            api_secret: seal("api_secret", input.api_secret),
            api_integration_code: seal("api_integration_code", input.api_integration_code),
            note_visibility: input.note_visibility,
            max_event_age_seconds: input.max_event_age_seconds.unwrap_or(3600),
        })
    }

    /// Opens one of the sealed fields.
    pub fn open(&self, field: &str, ring: &Keyring) -> Option<Secret> {
        let sealed = match field {
            "webhook_secret" => self.webhook_secret.as_ref(),
            "api_secret" => self.api_secret.as_ref(),
            "api_integration_code" => self.api_integration_code.as_ref(),
            _ => None,
        }?;
        ring.open(sealed, &cx(&self.id, field)).ok()
    }

    /// What may be shown.
    pub fn view(&self) -> AccountView {
        AccountView {
            id: self.id.clone(),
            provider: self.provider,
            webhook_secret_set: self.webhook_secret.is_some(),
            webhook_username: self.webhook_username.clone(),
            api_url: self.api_url.clone(),
            api_username: self.api_username.clone(),
            api_secret_set: self.api_secret.is_some(),
            api_integration_code_set: self.api_integration_code.is_some(),
            note_visibility: self.note_visibility,
            max_event_age_seconds: self.max_event_age_seconds,
            webhook_path: hook_path(self.provider, &self.id),
        }
    }
}
