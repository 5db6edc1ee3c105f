"""The experiment scripts end to end at a tiny budget: the files they write have the schema their docs promise."""
import numpy as np
import xarray as xr

from experiments import diagnose


def test_diagnose_writes_the_kl_of_each_setting_against_the_step(tmp_path, capsys):
    diagnose.main(["--settings", "demo,beta-top", "--budget", "2", "--out", str(tmp_path), "--quiet", "--tiny"])
    with xr.open_dataset(tmp_path / "diagnose.nc") as results:
        assert list(results.setting.values) == ["demo", "beta-top"]
        assert results.kl.dims == ("setting", "step", "level")
        assert list(results.step.values) == [1, 2] and list(results.level.values) == [1, 2, 3]
        assert np.isfinite(results.kl.values).all() and (results.kl.values > 0).all()
    assert (tmp_path / "diagnose.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out
    assert "| beta-top |" in table and "share above 1" in table


def test_diagnose_resumes_a_setting_to_a_larger_budget(tmp_path):
    diagnose.main(["--settings", "demo", "--budget", "1", "--out", str(tmp_path), "--quiet", "--tiny"])
    first = xr.open_dataset(tmp_path / "diagnose.nc").load()
    diagnose.main(["--settings", "demo", "--budget", "2", "--out", str(tmp_path), "--quiet", "--tiny"])
    with xr.open_dataset(tmp_path / "diagnose.nc") as second:
        assert list(second.step.values) == [1, 2]
        np.testing.assert_array_equal(second.kl.sel(step=1).values, first.kl.sel(step=1).values)
