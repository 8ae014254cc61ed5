fn main() {
    print!("{}", base_core::crdgen::crds_yaml().unwrap());
}
