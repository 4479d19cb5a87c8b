//! What tests of this crate and of the server use to run against PostgreSQL: a
//! database of their own, created for the test and dropped after it, so tests never
//! see each other's rows. Built only with the `test-support` feature.

use sqlx::{AnyConnection, Connection, Executor};

/// The variable naming a PostgreSQL role that may create databases.
pub const ADMIN_URL_VAR: &str = "REDOUBT_TEST_POSTGRES";
/// Where the tests look when the variable is not set: the machine's own server.
pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A PostgreSQL database that exists for as long as this value does.
#[derive(Debug)]
pub struct TempPostgres {
    admin_url: String,
    name: String,
    url: String,
}

fn admin_url() -> String {
    std::env::var(ADMIN_URL_VAR).unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_string())
}

/// The URL of the database `name` on the server of `admin`.
fn database_url(admin: &str, name: &str) -> String {
    let (base, query) = match admin.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (admin, None),
    };
    let server = match base.find("://") {
        Some(scheme_end) => match base[scheme_end + 3..].find('/') {
            Some(slash) => &base[..scheme_end + 3 + slash],
            None => base,
        },
        None => base,
    };
    match query {
        Some(q) => format!("{server}/{name}?{q}"),
        None => format!("{server}/{name}"),
    }
}

impl TempPostgres {
    /// Creates a fresh, empty database. Panics, naming what is needed, when no
    /// PostgreSQL server answers: these tests must not pass by skipping.
    pub async fn create() -> TempPostgres {
        sqlx::any::install_default_drivers();
        let admin_url = admin_url();
        let mut admin = match AnyConnection::connect(&admin_url).await {
            Ok(c) => c,
            Err(e) => panic!(
                "the PostgreSQL tests need a PostgreSQL server whose role may CREATE DATABASE; \
                 none answered at {admin_url} ({e}). Start the machine's one (`cargo xtask test` \
                 does: pg_ctlcluster … main start) or set {ADMIN_URL_VAR}=postgres://USER@HOST:PORT/DB"
            ),
        };
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let name = format!(
            "redoubt_test_{}_{}_{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .unwrap_or_else(|e| panic!("creating the test database {name}: {e}"));
        admin.close().await.ok();
        let url = database_url(&admin_url, &name);
        TempPostgres {
            admin_url,
            name,
            url,
        }
    }

    /// The URL of this database (for `Store::open` or a server's `database_url`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs raw statements on this database, as someone with direct access to it.
    pub async fn execute(&self, sql: &str) {
        let mut conn = AnyConnection::connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.name));
        conn.execute(sqlx::AssertSqlSafe(sql.to_string()))
            .await
            .unwrap_or_else(|e| panic!("running {sql}: {e}"));
        conn.close().await.ok();
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs inside the test's runtime, which cannot be blocked on: a thread
        // with a runtime of its own drops the database (closing what still uses it).
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut admin = AnyConnection::connect(&admin_url).await.ok()?;
                admin
                    .execute(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .await
                    .ok()?;
                admin.close().await.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("warning: the test database {} was not dropped", self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::database_url;

    #[test]
    fn the_database_replaces_the_admin_one_and_parameters_stay() {
        assert_eq!(
            database_url("postgres://u@h:5432/postgres", "t1"),
            "postgres://u@h:5432/t1"
        );
        assert_eq!(
            database_url("postgres://u@h/postgres?sslmode=disable", "t1"),
            "postgres://u@h/t1?sslmode=disable"
        );
        assert_eq!(database_url("postgres://u@h", "t1"), "postgres://u@h/t1");
    }
}
