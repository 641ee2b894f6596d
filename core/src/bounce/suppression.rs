//! stub
#[derive(Debug)] pub struct Suppression; #[derive(Debug)] pub struct SuppressionPolicy; #[derive(Debug)] pub struct SuppressionStore;
