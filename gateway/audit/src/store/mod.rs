//! The two stores, each in a folder of its own: the embedded one ([`sqlite`]) and the production
//! one ([`postgres`]). Nothing above the stores depends on one but the registry's handle, which
//! opens the store's readers.
//!
//! Their design: `docs/audit-store.md`.

pub mod postgres;
pub mod sqlite;

/// A CPR column read back as a [`samblik_cpr::Cpr`]; a value that is not a CPR number is a read
/// error whose message does not repeat it.
pub(crate) struct StoredCpr(pub samblik_cpr::Cpr);

impl rusqlite::types::FromSql for StoredCpr {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        samblik_cpr::Cpr::parse(value.as_str()?)
            .map(StoredCpr)
            .map_err(|e| rusqlite::types::FromSqlError::Other(Box::new(e)))
    }
}

impl<'a> ::postgres::types::FromSql<'a> for StoredCpr {
    fn from_sql(
        ty: &::postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let text = <&str as ::postgres::types::FromSql>::from_sql(ty, raw)?;
        Ok(StoredCpr(samblik_cpr::Cpr::parse(text)?))
    }

    fn accepts(ty: &::postgres::types::Type) -> bool {
        <&str as ::postgres::types::FromSql>::accepts(ty)
    }
}
