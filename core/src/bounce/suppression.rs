pub struct Suppression; pub struct SuppressionPolicy; pub struct SuppressionStore;
