pub mod generate;
pub mod rfc4475;
