pub mod bitcart;
