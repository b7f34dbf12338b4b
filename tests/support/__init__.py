"""Test helpers built once and reused: Redis processes, servers, proxies, flag builders."""
