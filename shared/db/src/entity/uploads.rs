use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "uploads")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub endpoint: String,
    pub file_id: Option<Uuid>,
    pub pipeline_id: Option<Uuid>,
    pub size: Option<i64>,
    pub offset: i64,
    pub metadata: String,
    pub is_partial: bool,
    pub parts: Option<Vec<Uuid>>,
    pub complete: bool,
    pub expires_at: DateTimeWithTimeZone,
    pub created_at: DateTimeWithTimeZone,
    pub updated_at: DateTimeWithTimeZone,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
