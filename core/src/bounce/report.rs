pub struct Report; pub struct ReportError; pub struct ReportKind; pub struct ReportRecipient;
