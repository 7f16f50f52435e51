"""Where a scoring actor runs: the device Ray assigned it and its own node's CPUs."""

import os

import ray
import torch

from mlc_dist.scoring.pipeline import actor_threads, assigned_device


@ray.remote(num_cpus=1, num_gpus=0)
class Probe:
    """An actor on a node that (we pretend) has a GPU that Ray did not assign to it."""

    def device_with_an_unreserved_gpu(self) -> str:
        torch.cuda.is_available = lambda: True
        return str(assigned_device())

    def threads(self, num_actors: int, reserved: float) -> int:
        return actor_threads(num_actors, reserved)

    def cores(self) -> int:
        return len(os.sched_getaffinity(0))


def test_an_actor_without_a_gpu_assigned_scores_on_cpu(ray_cluster):
    probe = Probe.remote()
    assert ray.get(probe.device_with_an_unreserved_gpu.remote()) == "cpu"


def test_actor_threads_come_from_its_node_not_the_driver(ray_cluster):
    node_cpus = int(ray.cluster_resources()["CPU"])  # one node: the test run's cluster
    probe = Probe.remote()
    cores = ray.get(probe.cores.remote())  # what the actor's process may run on
    # The node's CPUs as Ray counts them, but never more threads than cores: a local cluster
    # advertises more logical CPUs than the machine has.
    assert ray.get(probe.threads.remote(1, 1)) == min(node_cpus, cores)
    assert ray.get(probe.threads.remote(node_cpus, 1)) == 1
    assert ray.get(probe.threads.remote(2 * node_cpus, 1)) == 1   # never below one thread
    assert ray.get(probe.threads.remote(2 * node_cpus, 3)) == min(3, cores)  # what it reserved
