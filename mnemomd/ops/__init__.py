"""Operations: logs, metrics, health, and service-manager integration."""
