def test_freed_cpu_memory_is_kept_on_glibc():
    import platform

    from src.core.memory import keep_freed_cpu_memory

    assert keep_freed_cpu_memory() is (platform.libc_ver()[0] == "glibc")
