use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "files")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub name: String,
    pub kind: String,
    pub status: String,
    pub size: Option<i64>,
    pub expected_sha256: Option<String>,
    pub sha256: Option<String>,
    pub tags: Vec<String>,
    pub source_run_id: Option<Uuid>,
    pub error_message: String,
    pub request_id: Option<String>,
    pub created_at: DateTimeWithTimeZone,
    pub ready_at: Option<DateTimeWithTimeZone>,
    pub updated_at: DateTimeWithTimeZone,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
