import pytest

from megatron_plm.runtime.distributed import initialize

from megatron_plm.runtime.parallel import ParallelConfig


def test_single_process_runtime_and_clean_shutdown():
    import torch
    from megatron.core import parallel_state

    for _ in range(2):  # a second initialise after shutdown must work (tests, notebooks)
        with initialize(ParallelConfig(), seed=3) as runtime:
            assert (runtime.rank, runtime.world_size, runtime.data_parallel_size) == (0, 1, 1)
            assert runtime.backend == ("nccl" if torch.cuda.is_available() else "gloo")
            assert runtime.cpu_shim == (not torch.cuda.is_available())
            assert runtime.is_first_pipeline_stage and runtime.is_last_pipeline_stage
            assert parallel_state.model_parallel_is_initialized()
        assert not parallel_state.model_parallel_is_initialized()
        assert not torch.distributed.is_initialized()


@pytest.mark.parametrize(
    "parallel, field",
    [
        (ParallelConfig(tensor_model_parallel_size=2), "divisible"),
        (ParallelConfig(pipeline_model_parallel_size=0), "parallel.pipeline_model_parallel_size"),
        (ParallelConfig(sequence_parallel=True), "parallel.sequence_parallel"),
    ],
)
def test_invalid_layouts_name_the_field(parallel, field):
    with pytest.raises(ValueError, match=field):
        parallel.validate(world_size=1)
