"""Flow path, velocity target, timestep distribution, time grid, the Gaussian baseline and the samplers."""
import math

import pytest
import torch

from textldm.diffusion.flow import flow_loss, gaussian_optimal_loss, interpolate, sample_t, time_grid, velocity_target
from textldm.diffusion.sampling import integrate


def test_path_endpoints_and_velocity():
    x0, x1 = torch.randn(4, 3, 2), torch.randn(4, 3, 2)
    assert torch.allclose(interpolate(x0, x1, torch.zeros(4)), x0)
    assert torch.allclose(interpolate(x0, x1, torch.ones(4)), x1)
    t = torch.tensor([0.3, 0.5, 0.7, 0.9])
    # the velocity target is the time derivative of the path
    h = 1e-3
    fd = (interpolate(x0, x1, t + h) - interpolate(x0, x1, t - h)) / (2 * h)
    assert torch.allclose(fd, velocity_target(x0, x1), atol=1e-3)
    assert torch.allclose(flow_loss(velocity_target(x0, x1), x0, x1), torch.zeros(4))


def test_flow_loss_masks_positions():
    x0, x1 = torch.zeros(1, 3, 2), torch.zeros(1, 3, 2)
    v = torch.tensor([[[1.0, 1.0], [2.0, 2.0], [100.0, 100.0]]])
    mask = torch.tensor([[True, True, False]])
    assert torch.allclose(flow_loss(v, x0, x1, mask), torch.tensor([2.5]))


def test_logit_normal_timesteps():
    t = sample_t(200_000, "logit_normal", 0.0, 1.5, generator=torch.Generator().manual_seed(0))
    logit = torch.log(t / (1 - t))
    assert abs(logit.mean().item()) < 0.02 and abs(logit.std().item() - 1.5) < 0.02
    u = sample_t(1000, "uniform", generator=torch.Generator().manual_seed(0))
    assert 0 <= u.min() and u.max() <= 1


def test_time_grid_follows_the_training_quantiles():
    grid = time_grid(50, "logit_normal", 0.0, 1.5)
    assert grid[0] == 0 and grid[-1] == 1 and len(grid) == 51
    assert torch.all(grid[1:] > grid[:-1])
    assert abs(grid[25].item() - 0.5) < 1e-6  # the median
    # fraction of training samples below grid[k] is k/50
    t = sample_t(200_000, "logit_normal", 0.0, 1.5, generator=torch.Generator().manual_seed(1))
    for k in (5, 17, 40):
        assert abs((t < grid[k]).float().mean().item() - k / 50) < 0.005
    assert torch.allclose(time_grid(4, "uniform"), torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))


def test_gaussian_optimal_loss_matches_least_squares():
    """The closed form equals the residual of a fitted per-channel linear regression of v on x_t."""
    g = torch.Generator().manual_seed(0)
    n, var = 400_000, torch.tensor([0.3, 1.0, 2.5])
    x1 = 0.7 + var.sqrt() * torch.randn(n, 3, generator=g)
    x0 = torch.randn(n, 3, generator=g)
    for t in (0.1, 0.5, 0.9):
        xt = interpolate(x0, x1, torch.full((n,), t))
        v = velocity_target(x0, x1)
        resid = []
        for c in range(3):
            A = torch.stack([xt[:, c], torch.ones(n)], 1).double()
            coef = torch.linalg.lstsq(A, v[:, c:c + 1].double()).solution
            resid.append((v[:, c:c + 1].double() - A @ coef).pow(2).mean())
        expected = gaussian_optimal_loss(torch.tensor([t]), var)
        assert abs(torch.stack(resid).mean().item() - expected.item()) < 0.01
    # the trivial limits: at t=0 nothing is known (Var v = s2 + 1, minus what x0 reveals: 1)
    assert torch.allclose(gaussian_optimal_loss(torch.tensor([0.0]), var), var.mean().unsqueeze(0).float())


def test_euler_integrates_the_straight_path_field_exactly():
    """For data concentrated at a point x1, the marginal velocity is (x1 - x) / (1 - t): Euler follows the
    straight line and lands exactly on x1, on any grid."""
    x1 = torch.tensor([[1.5, -2.0, 0.25]])
    x0 = torch.tensor([[0.3, 0.1, -1.0]])
    field = lambda x, t: (x1 - x) / (1 - t.view(-1, 1))  # noqa: E731
    for grid in (time_grid(7, "uniform"), time_grid(13, "logit_normal", 0.0, 1.5)):
        assert torch.allclose(integrate(field, x0.clone(), grid), x1, atol=1e-5)


@pytest.mark.parametrize("solver,order", [("euler", 1), ("heun", 2), ("ab2", 2)])
@pytest.mark.parametrize("spacing", ["uniform", "graded"])
def test_solver_accuracy_order(solver, order, spacing):
    """dx/dt = x * cos(t): exact x(1) = x(0) * exp(sin(1)). Halving the step cuts the error by 2^order, on a
    uniform grid and on a graded one (t = u^2: unequal steps, which the multistep solver must account for)."""
    x0 = torch.tensor([[1.0]], dtype=torch.float64)
    exact = math.exp(math.sin(1.0))
    errors = []
    for steps in (16, 32, 64):
        grid = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
        grid = grid if spacing == "uniform" else grid**2
        out = integrate(lambda x, t: x * torch.cos(t.view(-1, 1).double()), x0.clone(), grid, solver)
        errors.append(abs(out.item() - exact))
    for coarse, fine in zip(errors, errors[1:]):
        assert abs(math.log2(coarse / fine) - order) < 0.25, errors


@pytest.mark.parametrize("solver", ["euler", "heun", "ab2"])
def test_solvers_report_their_evaluations(solver):
    from textldm.diffusion.sampling import evaluations

    calls = []
    integrate(lambda x, t: calls.append(1) or -x, torch.ones(2, 3), time_grid(6, "uniform"), solver)
    assert len(calls) == evaluations(solver, 6)


def test_shifted_grid_moves_steps_to_the_noise_end():
    uniform, shifted = time_grid(10, kind="uniform"), time_grid(10, kind="shifted", shift=3.0)
    assert shifted[0] == 0 and shifted[-1] == 1 and bool((shifted.diff() > 0).all())
    assert bool((shifted[1:-1] < uniform[1:-1]).all())
    assert torch.allclose(time_grid(10, kind="shifted", shift=1.0), uniform)


def test_callback_sees_every_step():
    seen = []
    integrate(lambda x, t: torch.ones_like(x), torch.zeros(1, 2), time_grid(5, "uniform"),
              callback=lambda i, t, x: seen.append((i, round(t, 3), x.clone())))
    assert [s[0] for s in seen] == [1, 2, 3, 4, 5]
    assert torch.allclose(seen[-1][2], torch.ones(1, 2))
