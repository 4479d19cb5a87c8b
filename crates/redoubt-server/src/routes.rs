//! The route table: every route is registered through [`Routes::add`] with the access it
//! requires, so the router and the list of who may call what are one thing. The list is
//! printed by `redoubt-server routes` and is what the authorization matrix test
//! (`tests/authz.rs`) walks: a route added without an access row cannot exist.
//!
//! The access is declared here and enforced by the handlers' extractors (`Admin` with
//! `Admin::require`, `Device`, the gate credential); the matrix test checks that the two
//! agree for every route and every kind of caller.

use axum::Router;
use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{MethodFilter, on};
use redoubt_proto::api::Role;
use serde::Serialize;

use crate::http::HttpState;

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "role")]
pub enum Access {
    /// Anyone: the route is harmless or proves the caller in its body (an enrollment
    /// token, a signed challenge) or inside its protocol (the agent's WebSocket).
    Public,
    /// An admin token of one of these roles.
    Admin(&'static [Role]),
    /// A device session (`Authorization: Device …`) of a device that is not revoked.
    Device,
    /// A device session of a current member of the group named in the path; any other
    /// device gets the 404 of a group that does not exist.
    Member,
    /// A gate credential: the gate page's cookie, `Authorization: Gate …`, or the
    /// one-time `?key=` link that sets the cookie.
    Gate,
    /// A console session (the web console's cookie) of an account of one of these roles;
    /// state-changing requests also carry the session's CSRF token.
    Console(&'static [Role]),
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Access::Public => f.write_str("public"),
            Access::Admin(roles) => {
                f.write_str("admin:")?;
                for (i, r) in roles.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{r}")?;
                }
                Ok(())
            }
            Access::Device => f.write_str("device"),
            Access::Member => f.write_str("member"),
            Access::Gate => f.write_str("gate"),
            Access::Console(roles) => {
                f.write_str("console:")?;
                for (i, r) in roles.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{r}")?;
                }
                Ok(())
            }
        }
    }
}

/// Every admin role (reading).
pub const ANY_ADMIN: &[Role] = &[Role::Owner, Role::Officer, Role::Operator, Role::Auditor];
/// Owners only.
pub const OWNER: &[Role] = &[Role::Owner];
/// What an officer does (modes, zones, gates).
pub const OFFICER: &[Role] = &[Role::Owner, Role::Officer];
/// What an operator does (devices, enrollment, commands).
pub const OPERATOR: &[Role] = &[Role::Owner, Role::Operator];
/// Who reviews credentials: owners, auditors.
pub const OWNER_AUDITOR: &[Role] = &[Role::Owner, Role::Auditor];
/// Who may list gate credentials.
pub const GATE_READERS: &[Role] = &[Role::Owner, Role::Officer, Role::Auditor];

/// One row of the route table.
#[derive(Clone, Debug, Serialize)]
pub struct RouteSpec {
    /// HTTP method.
    pub method: String,
    /// Full path template, as axum matches it (`/api/v1/devices/{id}`).
    pub path: String,
    /// Who may call it.
    pub access: Access,
}

/// A router that records the access of every route added to it.
pub struct Routes {
    router: Router<HttpState>,
    table: Vec<RouteSpec>,
}

impl Default for Routes {
    fn default() -> Self {
        Routes::new()
    }
}

/// `prefix` + `path` the way `Router::nest` joins them (a nested `/` is the prefix itself).
fn join(prefix: &str, path: &str) -> String {
    if path == "/" {
        prefix.to_owned()
    } else {
        format!("{prefix}{path}")
    }
}

impl Routes {
    /// An empty table.
    pub fn new() -> Routes {
        Routes {
            router: Router::new(),
            table: Vec::new(),
        }
    }

    /// Adds `handler` for `method` at `path`, callable by `access`.
    pub fn add<H, T>(mut self, method: Method, path: &str, access: Access, handler: H) -> Routes
    where
        H: Handler<T, HttpState>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone())
            .unwrap_or_else(|_| panic!("method {method} cannot be routed"));
        self.router = self.router.route(path, on(filter, handler));
        self.table.push(RouteSpec {
            method: method.to_string(),
            path: path.to_owned(),
            access,
        });
        self
    }

    /// Nests `inner` under `prefix`.
    pub fn nest(mut self, prefix: &str, inner: Routes) -> Routes {
        self.router = self.router.nest(prefix, inner.router);
        self.table.extend(inner.table.into_iter().map(|mut r| {
            r.path = join(prefix, &r.path);
            r
        }));
        self
    }

    /// Merges `other`'s routes into this one.
    pub fn merge(mut self, other: Routes) -> Routes {
        self.router = self.router.merge(other.router);
        self.table.extend(other.table);
        self
    }

    /// Applies a layer to the routes added so far (body limits).
    pub fn layer<L>(mut self, layer: L) -> Routes
    where
        L: tower::Layer<axum::routing::Route> + Clone + Send + Sync + 'static,
        L::Service: tower::Service<axum::extract::Request> + Clone + Send + Sync + 'static,
        <L::Service as tower::Service<axum::extract::Request>>::Response:
            axum::response::IntoResponse + 'static,
        <L::Service as tower::Service<axum::extract::Request>>::Error:
            Into<std::convert::Infallible> + 'static,
        <L::Service as tower::Service<axum::extract::Request>>::Future: Send + 'static,
    {
        self.router = self.router.layer(layer);
        self
    }

    /// The router and its table.
    pub fn into_parts(self) -> (Router<HttpState>, Vec<RouteSpec>) {
        (self.router, self.table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Routes are registered only through [`Routes::add`]: a `.route(` call anywhere
    /// else in the server would make a route the table (and the matrix test) does not
    /// know.
    #[test]
    fn no_route_bypasses_the_table() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut offenders = Vec::new();
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") && !p.ends_with("routes.rs") {
                    let text = std::fs::read_to_string(&p).unwrap();
                    if text.contains(".route(") || text.contains(".route_service(") {
                        offenders.push(p.display().to_string());
                    }
                }
            }
        }
        assert!(
            offenders.is_empty(),
            "routes added outside routes::Routes: {offenders:?}"
        );
    }

    #[test]
    fn nesting_joins_paths_like_axum() {
        async fn h() {}
        let inner = Routes::new().add(Method::GET, "/", Access::Public, h).add(
            Method::GET,
            "/{id}",
            Access::Device,
            h,
        );
        let (_, table) = Routes::new().nest("/zones", inner).into_parts();
        let paths: Vec<_> = table.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, ["/zones", "/zones/{id}"]);
    }
}
