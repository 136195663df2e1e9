//! OPA bundles: the Rego policy and the data document of one revision, as a tar.gz that any OPA
//! loads unchanged.
//!
//! The same tenants and policies always give the same bytes: entries in a fixed order with fixed
//! metadata, JSON with sorted keys, gzip without a timestamp. The manifest's revision names both
//! the event revision and the policy code, so a new policy build is a new bundle revision.

use std::collections::BTreeMap;
use std::io::Read;

use flate2::Compression;
use flate2::read::GzDecoder;
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::policy::{Action, Policy, SubjectKind, TenantScope};
use crate::tenant::Tenant;

/// The Rego policy every bundle carries: decisions.
pub const AUTHZ_REGO: &str = include_str!("../policy/authz.rego");
/// The Rego policy every bundle carries: the tenants a subject may use.
pub const TENANTS_REGO: &str = include_str!("../policy/tenants.rego");
/// The data root the bundle owns: the policy's package and the state document.
pub const DATA_ROOT: &str = "heimdall";
/// Where the state document lives below the root (`data.heimdall.state`). Kept apart from the
/// policy package so that tests can replace the state with `with` without replacing rules.
pub const STATE_KEY: &str = "state";

const MANIFEST_PATH: &str = ".manifest";
const DATA_PATH: &str = "heimdall/state/data.json";
const POLICY_PATH: &str = "heimdall/authz/policy.rego";
const TENANTS_POLICY_PATH: &str = "heimdall/tenants/policy.rego";
/// Largest entry read from a bundle: refuses decompression bombs.
const MAX_ENTRY_BYTES: u64 = 256 * 1024 * 1024;

/// Why a bundle cannot be built or read.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("bundle json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("bundle is malformed: {0}")]
    Malformed(String),
}

/// A built bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// The manifest revision: `<event revision>-<first 12 hex digits of the policy's SHA-256>`.
    pub revision: String,
    /// The tar.gz bytes.
    pub bytes: Vec<u8>,
    /// Hex SHA-256 of `bytes`, used as ETag and in notifications.
    pub digest: String,
}

/// What a bundle holds.
#[derive(Debug, Clone, PartialEq)]
pub struct BundleContents {
    pub revision: String,
    pub roots: Vec<String>,
    /// The state document under `data.heimdall.state`, as JSON text: a large document is parsed
    /// once, by whoever needs it, rather than held twice.
    pub data: String,
    /// Rego modules by path.
    pub modules: BTreeMap<String, String>,
}

/// Returns the manifest revision of event revision `revision` with the built-in policy.
pub fn bundle_revision(revision: u64) -> String {
    let mut hasher = Sha256::new();
    hasher.update(AUTHZ_REGO.as_bytes());
    hasher.update(TENANTS_REGO.as_bytes());
    let policy_digest = hex(&hasher.finalize());
    format!("{revision}-{}", &policy_digest[..12])
}

/// Builds the bundle of a state.
pub fn build<'a>(
    revision: u64,
    tenants: impl IntoIterator<Item = &'a Tenant>,
    policies: impl IntoIterator<Item = &'a Policy>,
) -> Result<Bundle, BundleError> {
    let revision_name = bundle_revision(revision);
    let manifest = json!({"revision": revision_name, "roots": [DATA_ROOT]});
    let data = data_json(tenants, policies)?;
    let entries: [(&str, Vec<u8>); 4] = [
        (MANIFEST_PATH, serde_json::to_vec(&manifest)?),
        (DATA_PATH, data),
        (POLICY_PATH, AUTHZ_REGO.as_bytes().to_vec()),
        (TENANTS_POLICY_PATH, TENANTS_REGO.as_bytes().to_vec()),
    ];
    let encoder = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), Compression::default());
    let mut archive = tar::Builder::new(encoder);
    archive.mode(tar::HeaderMode::Deterministic);
    for (path, contents) in &entries {
        let mut header = tar::Header::new_ustar();
        header.set_size(contents.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        archive.append_data(&mut header, path, contents.as_slice())?;
    }
    let bytes = archive.into_inner()?.finish()?;
    let digest = hex(&Sha256::digest(&bytes));
    Ok(Bundle {
        revision: revision_name,
        bytes,
        digest,
    })
}

/// Writes the state document (`data.heimdall.state`) as JSON: registered tenants, each policy
/// once by name, and per user and group the names of its policies by tenant (plus those scoped
/// to `*`), so that a decision reads only the policies that can apply to its tenant.
///
/// Keys and name lists come out sorted, so the same state always gives the same bytes.
pub fn data_json<'a>(
    tenants: impl IntoIterator<Item = &'a Tenant>,
    policies: impl IntoIterator<Item = &'a Policy>,
) -> Result<Vec<u8>, BundleError> {
    let mut state = StateDocument::default();
    for tenant in tenants {
        state.tenants.insert(
            tenant.id.as_str(),
            TenantDocument {
                name: &tenant.display_name,
            },
        );
    }
    for policy in policies {
        let name = policy.name.as_str();
        for subject in &policy.subjects {
            let by_subject = match subject.kind {
                SubjectKind::User => &mut state.subjects.user,
                SubjectKind::Group => &mut state.subjects.group,
            };
            let entry = by_subject.entry(subject.id.as_str()).or_default();
            for scope in &policy.scope.tenants {
                match scope {
                    TenantScope::AllRegistered => entry.registered.push(name),
                    TenantScope::Tenant(id) => {
                        entry.tenants.entry(id.as_str()).or_default().push(name);
                    }
                }
            }
        }
        state.policies.insert(name, PolicyDocument::of(policy));
    }
    for entry in state
        .subjects
        .user
        .values_mut()
        .chain(state.subjects.group.values_mut())
    {
        entry.registered.sort_unstable();
        entry.registered.dedup();
        for names in entry.tenants.values_mut() {
            names.sort_unstable();
            names.dedup();
        }
    }
    Ok(serde_json::to_vec(&state)?)
}

#[derive(Default, Serialize)]
struct StateDocument<'a> {
    policies: BTreeMap<&'a str, PolicyDocument<'a>>,
    subjects: SubjectsDocument<'a>,
    tenants: BTreeMap<&'a str, TenantDocument<'a>>,
}

#[derive(Default, Serialize)]
struct SubjectsDocument<'a> {
    group: BTreeMap<&'a str, SubjectEntry<'a>>,
    user: BTreeMap<&'a str, SubjectEntry<'a>>,
}

/// One user's or group's policy names: by tenant, and those scoped to every registered tenant.
#[derive(Default, Serialize)]
struct SubjectEntry<'a> {
    registered: Vec<&'a str>,
    tenants: BTreeMap<&'a str, Vec<&'a str>>,
}

#[derive(Serialize)]
struct TenantDocument<'a> {
    name: &'a str,
}

/// A policy as the Rego policy reads it. Field order is the serialised order.
#[derive(Serialize)]
struct PolicyDocument<'a> {
    actions: BTreeMap<&'static str, bool>,
    all_registered: bool,
    effect: &'static str,
    filters: Vec<String>,
    name: &'a str,
    resources: BTreeMap<&'static str, bool>,
    tenants: BTreeMap<&'a str, bool>,
}

impl<'a> PolicyDocument<'a> {
    fn of(policy: &'a Policy) -> Self {
        // "*" is expanded into every action, so that the policy matches an action by one lookup.
        let actions = if policy.actions.contains(&Action::All) {
            Action::NAMES.iter().map(|name| (*name, true)).collect()
        } else {
            policy
                .actions
                .iter()
                .map(|action| (action.as_str(), true))
                .collect()
        };
        let mut filters: Vec<String> = policy.filters.iter().map(ToString::to_string).collect();
        filters.sort_unstable();
        Self {
            actions,
            all_registered: policy.scope.tenants.contains(&TenantScope::AllRegistered),
            effect: policy.effect.as_str(),
            filters,
            name: policy.name.as_str(),
            resources: policy
                .scope
                .resources
                .iter()
                .map(|r| (r.as_str(), true))
                .collect(),
            tenants: policy
                .scope
                .tenants
                .iter()
                .filter_map(TenantScope::tenant)
                .map(|tenant| (tenant.as_str(), true))
                .collect(),
        }
    }
}

/// Reads a bundle: its manifest, the state document and the Rego modules.
pub fn read(bytes: &[u8]) -> Result<BundleContents, BundleError> {
    let mut archive = tar::Archive::new(GzDecoder::new(bytes));
    let mut manifest: Option<Value> = None;
    let mut data: Option<String> = None;
    let mut modules = BTreeMap::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.size() > MAX_ENTRY_BYTES {
            return Err(BundleError::Malformed(
                "an entry is larger than 256 MiB".to_owned(),
            ));
        }
        let path = entry
            .path()?
            .to_string_lossy()
            .trim_start_matches('/')
            .to_owned();
        let mut contents = Vec::with_capacity(entry.size() as usize);
        entry
            .by_ref()
            .take(MAX_ENTRY_BYTES)
            .read_to_end(&mut contents)?;
        match path.as_str() {
            MANIFEST_PATH => manifest = Some(serde_json::from_slice(&contents)?),
            DATA_PATH => {
                let text = String::from_utf8(contents)
                    .map_err(|_| BundleError::Malformed(format!("{DATA_PATH} is not UTF-8")))?;
                data = Some(text);
            }
            rego if rego.ends_with(".rego") => {
                let text = String::from_utf8(contents)
                    .map_err(|_| BundleError::Malformed(format!("{rego} is not UTF-8")))?;
                modules.insert(rego.to_owned(), text);
            }
            _ => {}
        }
    }
    let manifest = manifest.ok_or_else(|| BundleError::Malformed("no .manifest".to_owned()))?;
    let revision = manifest["revision"]
        .as_str()
        .ok_or_else(|| BundleError::Malformed("manifest without a revision".to_owned()))?
        .to_owned();
    let roots = manifest["roots"]
        .as_array()
        .map(|roots| {
            roots
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let data = data.ok_or_else(|| BundleError::Malformed(format!("no {DATA_PATH}")))?;
    if modules.is_empty() {
        return Err(BundleError::Malformed("no Rego module".to_owned()));
    }
    Ok(BundleContents {
        revision,
        roots,
        data,
        modules,
    })
}

/// Writes bytes as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

#[cfg(test)]
mod tests;
