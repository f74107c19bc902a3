//! The application's database: an `items` table of `(id, ver, payload)` rows, SQLite
//! embedded (a temporary file, WAL mode) or PostgreSQL. Versions are assigned by the
//! database (`ver = ver + 1 … RETURNING ver`) under its row or file lock, so per key
//! they follow commit order. A small pool of connections bounds the database's
//! concurrency, as an application's pool would; SQLite's blocking calls run on tokio's
//! blocking threads.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard, OwnedSemaphorePermit, Semaphore};

/// A database failure.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("database task failed: {0}")]
    Task(String),
}

type Result<T> = std::result::Result<T, DbError>;

/// How many connections the pool keeps.
const POOL: usize = 16;

enum Conn {
    Sqlite(rusqlite::Connection),
    Postgres(tokio_postgres::Client),
}

enum Backend {
    Sqlite(PathBuf),
    Postgres(String),
}

/// A pool of connections to one database, with the checker's table.
pub struct Db {
    backend: Backend,
    table: String,
    idle: Mutex<Vec<Conn>>,
    permits: Arc<Semaphore>,
    /// SQLite has one writer at a time and its busy handler is unfair (a writer can
    /// lose the lock for seconds): writers queue here, in order, instead.
    writer: Arc<AsyncMutex<()>>,
}

/// An open write transaction that has bumped one row's version.
pub struct Txn<'a> {
    db: &'a Db,
    conn: Option<Conn>,
    _permit: OwnedSemaphorePermit,
    _writer: Option<OwnedMutexGuard<()>>,
    pub ver: i64,
    pub payload: String,
}

impl Db {
    /// A SQLite database in the file `path` (created if missing).
    pub fn sqlite(path: &Path) -> Db {
        Db::new(Backend::Sqlite(path.to_path_buf()), "items".into())
    }

    /// A PostgreSQL database (`postgres://user@host:port/db`); the table is private to
    /// this process and dropped by [`Db::drop_table`].
    pub fn postgres(url: &str) -> Db {
        let table = format!("cachet_check_items_{}", std::process::id());
        Db::new(Backend::Postgres(url.to_string()), table)
    }

    fn new(backend: Backend, table: String) -> Db {
        Db {
            backend,
            table,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(POOL)),
            writer: Arc::new(AsyncMutex::new(())),
        }
    }

    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Sqlite(p) => format!("sqlite {}", p.display()),
            Backend::Postgres(u) => format!("postgres {u} (table {})", self.table),
        }
    }

    async fn checkout(&self) -> Result<(Conn, OwnedSemaphorePermit)> {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|e| DbError::Task(e.to_string()))?;
        let idle = self.idle.lock().ok().and_then(|mut v| v.pop());
        let conn = match idle {
            Some(c) => c,
            None => self.connect().await?,
        };
        Ok((conn, permit))
    }

    fn checkin(&self, conn: Conn) {
        if let Ok(mut v) = self.idle.lock() {
            v.push(conn);
        }
    }

    async fn connect(&self) -> Result<Conn> {
        match &self.backend {
            Backend::Sqlite(path) => {
                let path = path.clone();
                blocking(move || {
                    let c = rusqlite::Connection::open(path)?;
                    c.busy_timeout(Duration::from_secs(10))?;
                    c.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0))?;
                    c.execute_batch("PRAGMA synchronous=NORMAL")?;
                    Ok(Conn::Sqlite(c))
                })
                .await
            }
            Backend::Postgres(url) => {
                let (client, connection) =
                    tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                Ok(Conn::Postgres(client))
            }
        }
    }

    /// Runs `sql` (no parameters) on a pooled connection.
    async fn batch(&self, sql: String) -> Result<()> {
        let (conn, _permit) = self.checkout().await?;
        let conn = match conn {
            Conn::Sqlite(c) => blocking(move || {
                let r = c.execute_batch(&sql);
                r.map(|()| c).map_err(DbError::from)
            })
            .await
            .map(Conn::Sqlite)?,
            Conn::Postgres(c) => {
                c.batch_execute(&sql).await?;
                Conn::Postgres(c)
            }
        };
        self.checkin(conn);
        Ok(())
    }

    /// (Re)creates the table with rows `0..keys`, each at version 1.
    pub async fn reset(&self, keys: u32) -> Result<()> {
        let t = &self.table;
        let mut sql = format!(
            "DROP TABLE IF EXISTS {t}; \
             CREATE TABLE {t} (id INTEGER PRIMARY KEY, ver BIGINT NOT NULL, payload TEXT NOT NULL); "
        );
        for chunk in (0..keys).collect::<Vec<_>>().chunks(500) {
            let rows: Vec<String> = chunk
                .iter()
                .map(|i| format!("({i}, 1, 'item-{i}')"))
                .collect();
            sql.push_str(&format!("INSERT INTO {t} VALUES {}; ", rows.join(", ")));
        }
        self.batch(sql).await
    }

    /// Drops the table (PostgreSQL: the database outlives the check).
    pub async fn drop_table(&self) -> Result<()> {
        self.batch(format!("DROP TABLE IF EXISTS {}", self.table))
            .await
    }

    /// The committed version and payload of row `id`.
    pub async fn read(&self, id: u32) -> Result<(i64, String)> {
        let sql = format!("SELECT ver, payload FROM {} WHERE id = $1", self.table);
        let (conn, _permit) = self.checkout().await?;
        let (conn, row) = match conn {
            Conn::Sqlite(c) => {
                blocking(move || {
                    let r = c.query_row(&sql, [id], |r| Ok((r.get(0)?, r.get(1)?)));
                    r.map(|row| (Conn::Sqlite(c), row)).map_err(DbError::from)
                })
                .await?
            }
            Conn::Postgres(c) => {
                let row = c.query_one(&sql, &[&(id as i32)]).await?;
                let row = (row.try_get(0)?, row.try_get(1)?);
                (Conn::Postgres(c), row)
            }
        };
        self.checkin(conn);
        Ok(row)
    }

    /// The committed version of every row.
    pub async fn versions(&self) -> Result<Vec<(u32, i64)>> {
        let sql = format!("SELECT id, ver FROM {} ORDER BY id", self.table);
        let (conn, _permit) = self.checkout().await?;
        let (conn, rows) = match conn {
            Conn::Sqlite(c) => {
                blocking(move || {
                    let rows = {
                        let mut st = c.prepare(&sql)?;
                        let it = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                        it.collect::<rusqlite::Result<Vec<(u32, i64)>>>()?
                    };
                    Ok((Conn::Sqlite(c), rows))
                })
                .await?
            }
            Conn::Postgres(c) => {
                let mut rows = Vec::new();
                for r in c.query(&sql, &[]).await? {
                    rows.push((r.try_get::<_, i32>(0)? as u32, r.try_get(1)?));
                }
                (Conn::Postgres(c), rows)
            }
        };
        self.checkin(conn);
        Ok(rows)
    }

    /// Begins a transaction and bumps row `id`'s version (the row stays locked until
    /// [`Txn::commit`] or [`Txn::rollback`]).
    pub async fn begin_update(&self, id: u32) -> Result<Txn<'_>> {
        let sql = format!(
            "UPDATE {} SET ver = ver + 1 WHERE id = $1 RETURNING ver, payload",
            self.table
        );
        let writer = match self.backend {
            Backend::Sqlite(_) => Some(Arc::clone(&self.writer).lock_owned().await),
            Backend::Postgres(_) => None,
        };
        let (conn, permit) = self.checkout().await?;
        let (conn, ver, payload) = match conn {
            Conn::Sqlite(c) => {
                blocking(move || {
                    c.execute_batch("BEGIN IMMEDIATE")?;
                    match c.query_row(&sql, [id], |r| Ok((r.get(0)?, r.get(1)?))) {
                        Ok((v, p)) => Ok((Conn::Sqlite(c), v, p)),
                        Err(e) => {
                            let _ = c.execute_batch("ROLLBACK");
                            Err(DbError::from(e))
                        }
                    }
                })
                .await?
            }
            Conn::Postgres(c) => {
                c.batch_execute("BEGIN").await?;
                let row = c.query_one(&sql, &[&(id as i32)]).await?;
                let (v, p) = (row.try_get(0)?, row.try_get(1)?);
                (Conn::Postgres(c), v, p)
            }
        };
        Ok(Txn {
            db: self,
            conn: Some(conn),
            _permit: permit,
            _writer: writer,
            ver,
            payload,
        })
    }
}

impl Txn<'_> {
    pub async fn commit(self) -> Result<()> {
        self.finish("COMMIT").await
    }

    pub async fn rollback(self) -> Result<()> {
        self.finish("ROLLBACK").await
    }

    async fn finish(mut self, sql: &'static str) -> Result<()> {
        let Some(conn) = self.conn.take() else {
            return Ok(());
        };
        let conn = match conn {
            Conn::Sqlite(c) => blocking(move || {
                let r = c.execute_batch(sql);
                r.map(|()| c).map_err(DbError::from)
            })
            .await
            .map(Conn::Sqlite)?,
            Conn::Postgres(c) => {
                c.batch_execute(sql).await?;
                Conn::Postgres(c)
            }
        };
        self.db.checkin(conn);
        Ok(())
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DbError::Task(e.to_string()))?
}
