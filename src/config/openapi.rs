//! `openapi:`: routes generated from an API's own OpenAPI document (3.0 or 3.1).
//!
//! Each path + operation of the document becomes a route named `openapi:<operationId>`
//! (or `openapi:<METHOD> <path>`), matched on `prefix` + the path (`{param}` segments
//! stay router parameters) and that one method, so a method the document does not
//! define on a path it has is answered 405. Scopes come from the operation's `security`
//! (else the document's), counting only requirements whose scheme is `oauth2` or
//! `openIdConnect`: one requirement → all of its scopes; several → any one of them
//! (each with all of its scopes). `security: []` → `auth: none`; no security at all →
//! `auth: required` with no scopes (deny by default: a token is still needed).
//! Explicit `routes:` win where they have the same path pattern and method.
//!
//! The document is read with a small serde model of the parts routing needs (paths,
//! operations, `security`, `components.securitySchemes`), which have the same shape in
//! 3.0 and 3.1; everything else (schemas above all) is never parsed. The maintained
//! model crates each refuse one of the two versions: `openapiv3` (3.0) fails on a 3.1
//! schema such as `type: [string, "null"]`, and `oas3` (3.1) fails on a 3.0 schema such
//! as `exclusiveMinimum: true` and brings in regex, url and derive_more besides.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::Deserialize;

use super::{AuthMode, ConfigError, MatchConfig, Pattern, RouteConfig, UpstreamList};

/// One `openapi[]` block of `gateway.yaml`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenApiConfig {
    /// The OpenAPI document (YAML or JSON), relative to gateway.yaml's folder.
    pub file: PathBuf,
    /// One URL or a list of endpoints, for every generated route.
    pub upstream: UpstreamList,
    /// The audience every generated route requires of a token.
    #[serde(default)]
    pub audience: Option<String>,
    /// Prepended to every path of the document (`/api` + `/contacts` = `/api/contacts`).
    #[serde(default)]
    pub prefix: Option<String>,
    /// Remove `prefix` before forwarding (the upstream sees the document's paths).
    #[serde(default)]
    pub strip_prefix: bool,
}

/// A route made from an OpenAPI operation.
#[derive(Debug, Clone)]
pub struct GeneratedRoute {
    pub route: RouteConfig,
    /// `openapi:<file as written>`, for the route table.
    pub origin: String,
    /// Alternatives of all-of scope sets (any one suffices), when neither `scopes` nor
    /// `any_scopes` can say it; empty otherwise.
    pub alternatives: Vec<Vec<String>>,
    /// Index of the `openapi[]` block it came from.
    pub block: usize,
}

/// Everything the `openapi:` blocks generated.
#[derive(Debug, Clone, Default)]
pub struct Generated {
    pub routes: Vec<GeneratedRoute>,
    /// Generated routes dropped because an explicit route has their path and method.
    pub notes: Vec<String>,
    /// The documents read (resolved paths), which reloads watch.
    pub files: Vec<PathBuf>,
}

// --- The parts of an OpenAPI document that routing reads ---

/// Paths are read into a sorted map: generated routes (and the route table) come in path
/// order, then method order, whatever the document's order.
#[derive(Debug, Deserialize)]
struct Document {
    openapi: String,
    #[serde(default)]
    paths: BTreeMap<String, PathItem>,
    #[serde(default)]
    security: Option<Vec<Requirement>>,
    #[serde(default)]
    components: Components,
}

/// Scheme name → scopes (all of them, and all schemes of the requirement).
type Requirement = BTreeMap<String, Vec<String>>;

#[derive(Debug, Default, Deserialize)]
struct Components {
    #[serde(default, rename = "securitySchemes")]
    security_schemes: BTreeMap<String, Scheme>,
}

#[derive(Debug, Deserialize)]
struct Scheme {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default, rename = "$ref")]
    reference: Option<String>,
}

#[derive(Debug, Deserialize)]
struct PathItem {
    #[serde(default, rename = "$ref")]
    reference: Option<String>,
    get: Option<Operation>,
    put: Option<Operation>,
    post: Option<Operation>,
    delete: Option<Operation>,
    options: Option<Operation>,
    head: Option<Operation>,
    patch: Option<Operation>,
    trace: Option<Operation>,
}

#[derive(Debug, Deserialize)]
struct Operation {
    #[serde(default, rename = "operationId")]
    operation_id: Option<String>,
    #[serde(default)]
    security: Option<Vec<Requirement>>,
}

impl PathItem {
    fn operations(&self) -> impl Iterator<Item = (&'static str, &Operation)> {
        [
            ("GET", &self.get),
            ("PUT", &self.put),
            ("POST", &self.post),
            ("DELETE", &self.delete),
            ("OPTIONS", &self.options),
            ("HEAD", &self.head),
            ("PATCH", &self.patch),
            ("TRACE", &self.trace),
        ]
        .into_iter()
        .filter_map(|(method, op)| op.as_ref().map(|op| (method, op)))
    }
}

/// What an operation's security asks of a token.
#[derive(Debug, PartialEq, Eq)]
enum Access {
    Open,
    /// Any one of these all-of sets (an empty set: any token).
    Token(Vec<Vec<String>>),
}

/// Reads every block's document and makes its routes. `base` is gateway.yaml's folder.
pub(super) fn generate(
    blocks: &[OpenApiConfig],
    explicit: &[RouteConfig],
    base: &Path,
) -> Result<Generated, ConfigError> {
    let mut generated = Generated::default();
    let mut names = HashSet::new();
    for (index, block) in blocks.iter().enumerate() {
        let at = format!("openapi[{index}]");
        let file = base.join(&block.file);
        let doc = read(&file).map_err(|err| ConfigError::at(format!("{at}.file"), err))?;
        let prefix = block.prefix.as_deref().unwrap_or("");
        check_prefix(prefix, block.strip_prefix, &at)?;
        if let Some(audience) = &block.audience
            && audience.is_empty()
        {
            return Err(ConfigError::at(format!("{at}.audience"), "empty audience"));
        }
        let origin = format!("openapi:{}", block.file.display());
        let problem = |what: String| {
            ConfigError::at(
                format!("{at}.file"),
                format!("{}: {what}", block.file.display()),
            )
        };
        for (path, item) in &doc.paths {
            if item.reference.is_some() {
                return Err(problem(format!(
                    "paths.{path}: a $ref path item is not supported; write the operations in place"
                )));
            }
            let pattern = Pattern::parse(&format!("{prefix}{}", route_path(path)))
                .map_err(|err| problem(format!("paths.{path}: {err}")))?;
            for (method, op) in item.operations() {
                let operation = format!("paths.{path}.{}", method.to_ascii_lowercase());
                let access = access(&doc, op.security.as_ref())
                    .map_err(|err| problem(format!("{operation}: {err}")))?;
                let name = match &op.operation_id {
                    Some(id) => format!("openapi:{id}"),
                    None => format!("openapi:{method} {path}"),
                };
                if name.len() > 200 || !name.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                    return Err(problem(format!(
                        "{operation}: route name {name:?} must be at most 200 printable ASCII characters (it labels metrics and logs)"
                    )));
                }
                if !names.insert(name.clone()) {
                    return Err(problem(format!(
                        "{operation}: route name {name:?} is used by another operation (operationIds must be unique)"
                    )));
                }
                if let Some(winner) = explicit.iter().find(|r| overlaps(r, &pattern, method)) {
                    generated.notes.push(format!(
                        "note: {name} ({method} {pattern}, {origin}) is not routed: route {:?} has its path and method",
                        winner.name
                    ));
                    continue;
                }
                let route = make_route(block, name, &pattern, method, prefix);
                let mut made = shape(route, access, &origin);
                made.block = index;
                generated.routes.push(made);
            }
        }
        generated.files.push(file);
    }
    Ok(generated)
}

impl super::Config {
    /// Reads the `openapi:` documents (relative to `base`, gateway.yaml's folder) into
    /// [`Config::openapi_routes`]; run after [`Config::validate`].
    pub(super) fn expand_openapi(&mut self, base: &Path) -> Result<(), ConfigError> {
        if self.openapi.is_empty() {
            return Ok(());
        }
        let generated = generate(&self.openapi, &self.routes, base)?;
        let trusted =
            !self.trust.issuers.is_empty() || self.issuer.as_ref().is_some_and(|i| i.enabled);
        if !trusted
            && let Some(route) = generated
                .routes
                .iter()
                .find(|g| g.route.auth != AuthMode::None)
        {
            return Err(ConfigError::at(
                format!("openapi[{}]", route.block),
                format!(
                    "route {:?} needs tokens but no issuer is trusted; add trust.issuers or enable the built-in issuer",
                    route.route.name
                ),
            ));
        }
        self.openapi_routes = generated;
        Ok(())
    }
}

/// The document's path with every whole-segment `{name}` as a router parameter (names
/// such as `{contact-id}` are fine in OpenAPI; the router only needs the segment).
fn route_path(path: &str) -> String {
    path.split('/')
        .map(
            |seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) if !name.is_empty() && !name.contains(['{', '}']) => {
                    let clean: String = name
                        .chars()
                        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                        .collect();
                    format!("{{{clean}}}")
                }
                _ => seg.to_string(),
            },
        )
        .collect::<Vec<_>>()
        .join("/")
}

fn check_prefix(prefix: &str, strip: bool, at: &str) -> Result<(), ConfigError> {
    if prefix.is_empty() {
        if strip {
            return Err(ConfigError::at(
                format!("{at}.strip_prefix"),
                "there is no prefix to strip",
            ));
        }
        return Ok(());
    }
    let ok = prefix.starts_with('/')
        && !prefix.ends_with('/')
        && !prefix.contains(['*', '{', '}', '?', '#'])
        && Pattern::parse(prefix).is_ok();
    if !ok {
        return Err(ConfigError::at(
            format!("{at}.prefix"),
            format!("{prefix:?} must be a literal path starting with '/' and not ending with '/'"),
        ));
    }
    Ok(())
}

/// Reads and parses one document; errors give the position in it.
fn read(file: &Path) -> Result<Document, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|err| format!("cannot read {}: {err}", file.display()))?;
    let deserializer = serde_norway::Deserializer::from_str(&text);
    let doc: Document = serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let mut message = inner.to_string();
        if let Some(pos) = message.find(" at line ") {
            message.truncate(pos);
        }
        let line = inner
            .location()
            .map(|l| format!(":{}", l.line()))
            .unwrap_or_default();
        let path = if path == "." {
            String::new()
        } else {
            format!("{path}: ")
        };
        format!("{}{line}: {path}{message}", file.display())
    })?;
    if !(doc.openapi.starts_with("3.0") || doc.openapi.starts_with("3.1")) {
        return Err(format!(
            "{}: openapi {:?}: only OpenAPI 3.0 and 3.1 documents are read",
            file.display(),
            doc.openapi
        ));
    }
    Ok(doc)
}

/// The operation's security (else the document's), counting oauth2/openIdConnect only.
fn access(doc: &Document, own: Option<&Vec<Requirement>>) -> Result<Access, String> {
    let Some(requirements) = own.or(doc.security.as_ref()) else {
        return Ok(Access::Token(vec![Vec::new()]));
    };
    // `[]`, or only `{}`: anonymous access is what the document asks for.
    if requirements.iter().all(BTreeMap::is_empty) {
        return Ok(Access::Open);
    }
    let mut alternatives: Vec<Vec<String>> = Vec::new();
    for requirement in requirements {
        let mut scopes = Vec::new();
        let mut counted = false;
        for (scheme, wanted) in requirement {
            if is_token_scheme(doc, scheme)? {
                counted = true;
                for scope in wanted {
                    check_scope(scope)?;
                    if !scopes.contains(scope) {
                        scopes.push(scope.clone());
                    }
                }
            }
        }
        // An anonymous (`{}`) or non-token (apiKey, http, mutualTLS) alternative cannot
        // be checked here: it is left out, so a token is still required (deny by default).
        if counted && !alternatives.contains(&scopes) {
            alternatives.push(scopes);
        }
    }
    if alternatives.is_empty() || alternatives.iter().any(Vec::is_empty) {
        // No scope requirement the gateway can check, or one alternative without scopes.
        alternatives = vec![Vec::new()];
    }
    Ok(Access::Token(alternatives))
}

fn is_token_scheme(doc: &Document, name: &str) -> Result<bool, String> {
    let mut scheme =
        doc.components.security_schemes.get(name).ok_or_else(|| {
            format!("security scheme {name:?} is not in components.securitySchemes")
        })?;
    if let Some(reference) = &scheme.reference {
        scheme = reference
            .strip_prefix("#/components/securitySchemes/")
            .and_then(|target| doc.components.security_schemes.get(target))
            .filter(|target| target.reference.is_none())
            .ok_or_else(|| format!("security scheme {name:?}: cannot follow $ref {reference:?}"))?;
    }
    match scheme.kind.as_deref() {
        Some("oauth2" | "openIdConnect") => Ok(true),
        Some(_) => Ok(false),
        None => Err(format!("security scheme {name:?} has no type")),
    }
}

fn check_scope(scope: &str) -> Result<(), String> {
    if scope.is_empty()
        || !scope
            .bytes()
            .all(|b| b > 0x20 && b < 0x7f && b != b'"' && b != b'\\')
    {
        return Err(format!(
            "{scope:?} is not a valid scope (RFC 6749: printable ASCII, no spaces, quotes or backslashes)"
        ));
    }
    Ok(())
}

/// Same path pattern (parameter names aside) and a method the explicit route takes.
fn overlaps(route: &RouteConfig, pattern: &Pattern, method: &str) -> bool {
    route.matcher.path.segments() == pattern.segments()
        && route.matcher.path.is_prefix() == pattern.is_prefix()
        && route
            .matcher
            .methods
            .as_ref()
            .is_none_or(|methods| methods.iter().any(|m| m == method))
}

fn make_route(
    block: &OpenApiConfig,
    name: String,
    pattern: &Pattern,
    method: &str,
    prefix: &str,
) -> RouteConfig {
    RouteConfig {
        name,
        matcher: MatchConfig {
            path: pattern.clone(),
            methods: Some(vec![method.to_string()]),
        },
        upstream: block.upstream.clone(),
        strip_prefix: block.strip_prefix.then(|| prefix.to_string()),
        auth: AuthMode::Required,
        audience: block.audience.clone(),
        scopes: Vec::new(),
        any_scopes: Vec::new(),
        balance: Default::default(),
        health: None,
        rate_limit: None,
        max_body: None,
        timeouts: Default::default(),
        cors: None,
        protocol: Default::default(),
        websocket: false,
        revocation: Default::default(),
        upstream_token: None,
        dpop: Default::default(),
    }
}

/// Puts `access` into the route: `scopes` for one alternative, `any_scopes` when each
/// has one scope, else the alternatives themselves (the policy checks them).
fn shape(mut route: RouteConfig, access: Access, origin: &str) -> GeneratedRoute {
    let mut alternatives = Vec::new();
    match access {
        Access::Open => {
            route.auth = AuthMode::None;
            if route.audience.is_some() {
                // An audience is a token check; an open operation checks no token.
                route.audience = None;
            }
        }
        Access::Token(mut sets) if sets.len() == 1 => route.scopes = sets.remove(0),
        Access::Token(sets) if sets.iter().all(|s| s.len() == 1) => {
            route.any_scopes = sets.into_iter().flatten().collect();
        }
        Access::Token(sets) => alternatives = sets,
    }
    GeneratedRoute {
        route,
        origin: origin.to_string(),
        alternatives,
        block: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str) -> Document {
        serde_norway::from_str(text).unwrap()
    }

    const SCHEMES: &str = "components:\n  securitySchemes:\n    o: { type: oauth2, flows: {} }\n    i: { type: openIdConnect, openIdConnectUrl: https://x }\n    k: { type: apiKey, in: header, name: k }\n";

    fn access_of(security: &str) -> Access {
        let d = doc(&format!("openapi: 3.1.0\n{SCHEMES}"));
        let own: Option<Vec<Requirement>> = serde_norway::from_str(security).unwrap();
        access(&d, own.as_ref()).unwrap()
    }

    #[test]
    fn security_maps_to_alternatives_of_all_of_sets() {
        let set = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(access_of("[]"), Access::Open);
        assert_eq!(access_of("[{}]"), Access::Open);
        assert_eq!(access_of("null"), Access::Token(vec![vec![]]));
        assert_eq!(
            access_of("[{o: [a, b]}]"),
            Access::Token(vec![set(&["a", "b"])])
        );
        assert_eq!(
            access_of("[{o: [a]}, {i: [b, c]}]"),
            Access::Token(vec![set(&["a"]), set(&["b", "c"])])
        );
        // apiKey alternatives and `{}` beside token ones are left out: a token is needed.
        assert_eq!(
            access_of("[{k: []}, {}, {o: [a]}]"),
            Access::Token(vec![set(&["a"])])
        );
        assert_eq!(access_of("[{k: []}]"), Access::Token(vec![vec![]]));
        // One alternative without scopes: any token will do.
        assert_eq!(
            access_of("[{o: [a]}, {i: []}]"),
            Access::Token(vec![vec![]])
        );
    }

    #[test]
    fn unknown_schemes_are_errors() {
        let d = doc(&format!("openapi: 3.0.3\n{SCHEMES}"));
        let own: Vec<Requirement> = serde_norway::from_str("[{nope: [a]}]").unwrap();
        assert!(access(&d, Some(&own)).unwrap_err().contains("nope"));
    }

    /// `gateway.yaml` text with one `openapi` block over `doc`, loaded from a temp folder.
    fn load(gateway: &str, doc: &str) -> Result<super::super::Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!(
            "scopegate-openapi-unit-{}-{}",
            std::process::id(),
            gateway.len() * 31 + doc.len()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("api.yaml"), doc).unwrap();
        let result = super::super::Config::from_yaml_in(gateway, |_| None, &dir);
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    const TRUST: &str =
        "trust:\n  issuers:\n    - issuer: https://id.example.com/\n      audiences: [api]\n";

    #[test]
    fn blocks_are_checked_with_their_key_paths() {
        let doc = "openapi: 3.0.3\npaths:\n  /a:\n    get: { operationId: a }\n";
        let block = |extra: &str| {
            format!("openapi:\n  - {{ file: api.yaml, upstream: builtin:echo{extra} }}\n")
        };
        // A token is needed, and no issuer is trusted.
        let err = load(&block(""), doc).unwrap_err();
        assert_eq!(err.path, "openapi[0]", "{err}");
        let err = load(&format!("{TRUST}{}", block(", prefix: api/")), doc).unwrap_err();
        assert_eq!(err.path, "openapi[0].prefix", "{err}");
        let err = load(&format!("{TRUST}{}", block(", strip_prefix: true")), doc).unwrap_err();
        assert_eq!(err.path, "openapi[0].strip_prefix", "{err}");
        let twice = "openapi: 3.0.3\npaths:\n  /a:\n    get: { operationId: a }\n  /b:\n    get: { operationId: a }\n";
        let err = load(&format!("{TRUST}{}", block("")), twice).unwrap_err();
        assert_eq!(err.path, "openapi[0].file", "{err}");
        assert!(err.message.contains("openapi:a"), "{err}");
        let swagger = "swagger: '2.0'\nopenapi: 2.0.0\n";
        let err = load(&format!("{TRUST}{}", block("")), swagger).unwrap_err();
        assert!(err.message.contains("3.0 and 3.1"), "{err}");
        let config = load(
            &format!("{TRUST}{}", block(", prefix: /v1, strip_prefix: true")),
            doc,
        )
        .unwrap();
        let route = &config.openapi_routes.routes[0].route;
        assert_eq!(route.name, "openapi:a");
        assert_eq!(route.matcher.path.as_str(), "/v1/a");
        assert_eq!(route.strip_prefix.as_deref(), Some("/v1"));
        assert_eq!(route.auth, AuthMode::Required);
    }

    #[test]
    fn parameter_names_become_router_parameters() {
        assert_eq!(route_path("/a/{contact-id}/b"), "/a/{contact_id}/b");
        assert_eq!(route_path("/a/{id}.json"), "/a/{id}.json");
    }
}
