"""A Hydra launcher for the tests: Hydra's basic launcher, except that it loses the first job it is
given (never runs it) and returns None for it without raising, as a launcher whose worker vanished
might. On PYTHONPATH only in the test that selects it with
`hydra.launcher._target_=hydra_plugins.thaw_test_launcher.LosesFirstJobLauncher`."""

from hydra._internal.core_plugins.basic_launcher import BasicLauncher


class LosesFirstJobLauncher(BasicLauncher):
    lost = False

    def launch(self, job_overrides, initial_job_idx):
        if LosesFirstJobLauncher.lost:
            return super().launch(job_overrides, initial_job_idx)
        LosesFirstJobLauncher.lost = True
        rest = (
            super().launch(job_overrides[1:], initial_job_idx + 1) if len(job_overrides) > 1 else []
        )
        return [None, *rest]
