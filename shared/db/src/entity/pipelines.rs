use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "pipelines")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub status: String,
    pub name: String,
    pub version: String,
    pub description: String,
    pub license: String,
    pub developers: Vec<String>,
    pub pirus_api: String,
    pub package_file_id: Option<Uuid>,
    pub image_file_id: Option<Uuid>,
    pub image_sha256: Option<String>,
    pub manifest: Option<Json>,
    pub form: Option<Json>,
    pub error_message: String,
    pub request_id: Option<String>,
    pub created_at: DateTimeWithTimeZone,
    pub installed_at: Option<DateTimeWithTimeZone>,
    pub updated_at: DateTimeWithTimeZone,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
