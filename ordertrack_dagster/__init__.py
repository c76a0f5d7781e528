"""ordertrack: keeps orders' delivery status current from the couriers' tracking APIs."""
