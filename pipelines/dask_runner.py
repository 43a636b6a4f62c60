"""Beam's DaskRunner with the fixes the batch pipeline needs to give correct results.

    python -m freshindex.pipelines.batch ... \
        --runner freshindex.pipelines.dask_runner.DaskRunner --dask_client_address tcp://H:P

Beam's own runner (``apache_beam.runners.dask.dask_runner.DaskRunner``, Beam 2.77) keeps
one Dask bag per *transform*, not per PCollection, and so gives wrong results on any
pipeline with a multi-output ``ParDo`` (``.with_outputs``). What it does:

1. every output of a multi-output ParDo holds the elements of *all* its outputs (an
   errors side input receives the documents too, a count counts both);
2. elements a DoFn emits from ``finish_bundle`` are dropped (``BatchElements`` loses the
   last batch of each bundle: documents are neither embedded nor written);
3. only the last transform's bag is computed: a branch not upstream of it never runs;
4. the workers' ``FileSystems`` never get the pipeline options (``s3://`` fails).

This subclass keeps Beam's translations (Create, ParDo, GroupByKey, Flatten) and changes
the bookkeeping around them: one bag per PCollection, a ParDo's elements tagged by output
and split, bundle outputs collected after ``finish_bundle``, every leaf computed, the
options set on the workers. It also persists each side input once on the cluster (Beam's
runner recomputes a side input's whole upstream in every task that reads it) and closes
its client after the run. What it leaves as it is (no state or timers, side inputs in the
global window only, one partition from a small ``Create``) is in docs/ARCHITECTURE.md
("On a distributed runner").
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import dask.bag as db
from apache_beam import DoFn, TaggedOutput, pvalue
from apache_beam.io.filesystems import FileSystems
from apache_beam.pipeline import AppliedPTransform, PipelineVisitor
from apache_beam.runners.common import (
    DoFnContext,
    DoFnInvoker,
    DoFnSignature,
    _OutputHandler,
)
from apache_beam.runners.dask import dask_runner as beam_dask
from apache_beam.runners.dask import transform_evaluator as te
from apache_beam.transforms.sideinputs import SideInputMap


def _bundle(items, fn, window_fn, label, side_inputs, args, kwargs, options):
    """Run ``fn`` over one partition (a bundle); returns (output tag, value) pairs, the
    main output's tag None, including what ``finish_bundle`` emits."""
    FileSystems.set_options(options)  # as Beam's SDK harness does: s3:// needs them
    receivers = te.OneReceiver()  # per bundle: never shared between partitions
    invoker = DoFnInvoker.create_invoker(
        DoFnSignature(fn),
        _OutputHandler(
            window_fn=window_fn,
            main_receivers=receivers[None],
            tagged_receivers=receivers,
            per_element_output_counter=None,
            output_batch_converter=None,
            process_yields_batches=False,
            process_batch_yields_elements=False,
        ),
        context=DoFnContext(label, state=None),
        side_inputs=side_inputs,
        input_args=args,
        input_kwargs=kwargs,
        user_state_context=None,
        bundle_finalizer_param=DoFn.BundleFinalizerParam(),
    )
    invoker.invoke_setup()
    invoker.invoke_start_bundle()
    for item in items:
        invoker.invoke_process(item)
    invoker.invoke_finish_bundle()
    invoker.invoke_teardown()
    out = []
    for value in receivers.values:
        if isinstance(value, TaggedOutput):
            out.append((value.tag, value.value.value))
        else:
            out.append((None, value.value))
    return out


class _TaggedParDo(te.ParDo):
    """Beam's ParDo translation, its elements tagged by output: (tag, value)."""

    def apply(self, input_bag: db.Bag, side_inputs=None) -> db.Bag:
        transform = self.transform
        args, kwargs = transform.raw_side_inputs
        main_input = next(iter(self.applied.main_inputs.values()))
        window_fn = getattr(getattr(main_input, "windowing", None), "windowfn", None)
        return input_bag.map(te.get_windowed_value, window_fn).map_partitions(
            _bundle,
            transform.fn,
            window_fn,
            transform.label,
            side_inputs,
            list(args),
            kwargs,
            self.bag_kwargs.get("pipeline_options"),
        )


def _has_tag(tag, pair: tuple[Any, Any]) -> bool:
    return pair[0] == tag


def _value(pair: tuple[Any, Any]) -> Any:
    return pair[1]


@dataclasses.dataclass
class _BagPerPCollection(PipelineVisitor):
    bag_kwargs: dict
    client: Any = None  # persists side inputs when given
    bags: dict = dataclasses.field(default_factory=dict)  # PCollection -> bag
    persisted: dict = dataclasses.field(default_factory=dict)  # PCollection -> bag
    consumed: set = dataclasses.field(default_factory=set)

    def visit_transform(self, node: AppliedPTransform) -> None:
        op_class = te.TRANSLATIONS.get(node.transform.__class__, te.NoOp)
        if op_class is te.ParDo:
            op_class = _TaggedParDo
        op = op_class(node, bag_kwargs=self.bag_kwargs)
        kws: dict[str, Any] = {"input_bag": None, "side_inputs": None}
        inputs = [i for i in node.inputs if not isinstance(i, pvalue.PBegin)]
        self.consumed.update(inputs)
        if node.inputs:
            bags = [self.bags[i] for i in inputs] or [None]
            single = len(bags) == 1 and not isinstance(op, te.Flatten)
            kws["input_bag"] = bags[0] if single else bags
        if node.side_inputs:
            self.consumed.update(si.pvalue for si in node.side_inputs)
            kws["side_inputs"] = [
                SideInputMap(
                    type(si),
                    si._view_options(),
                    te.DaskBagWindowedIterator(self._side(si.pvalue), si._window_mapping_fn),
                )
                for si in node.side_inputs
            ]
        bag = op.apply(**kws)
        for tag, pcoll in node.outputs.items():
            if isinstance(op, _TaggedParDo):
                self.bags[pcoll] = bag.filter(functools.partial(_has_tag, tag)).map(_value)
            else:
                self.bags[pcoll] = bag

    def _side(self, pcoll) -> db.Bag:
        if self.client is None:
            return self.bags[pcoll]
        if pcoll not in self.persisted:
            self.persisted[pcoll] = self.client.persist(self.bags[pcoll], optimize_graph=False)
        return self.persisted[pcoll]

    def leaves(self) -> list[db.Bag]:
        return [b for p, b in self.bags.items() if p not in self.consumed and b is not None]


@dataclasses.dataclass
class _Result(beam_dask.DaskRunnerResult):
    side_inputs: dict  # the persisted side inputs, held (their futures) until the run ends

    def wait_until_finish(self, duration=None) -> str:
        try:
            return super().wait_until_finish(duration)
        finally:
            self.side_inputs.clear()
            self.client.close()  # else it outlives the run, reconnecting to the scheduler


class DaskRunner(beam_dask.DaskRunner):
    """Beam's DaskRunner, with a bag per PCollection and every leaf computed (see above)."""

    @staticmethod
    def to_dask_bag_visitor(bag_kwargs=None) -> PipelineVisitor:
        return _BagPerPCollection(bag_kwargs or {})

    def run_pipeline(self, pipeline, options):
        import dask.distributed as ddist
        from apache_beam.runners.dask.overrides import dask_overrides

        dask_options = options.view_as(beam_dask.DaskOptions).get_all_options(
            drop_default=True, current_only=True
        )
        bag_kwargs = beam_dask.DaskOptions._extract_bag_kwargs(dask_options)
        bag_kwargs["pipeline_options"] = options  # for the workers' file systems
        client = ddist.Client(**dask_options)
        pipeline.replace_all(dask_overrides())
        visitor = _BagPerPCollection(bag_kwargs, client)
        pipeline.visit(visitor)
        futures = client.compute(visitor.leaves(), optimize_graph=False)
        return _Result(client, futures, visitor.persisted)
