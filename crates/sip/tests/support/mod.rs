pub mod rfc4475;
