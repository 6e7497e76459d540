// ComfyUI-Uni1 front-end extension.
//
// Reasoning Plan node: after a run, shows the plan summary and the conditioning text (and, when a
// reasoning model planned, its report, detailed prompt and thinking), and offers
// "pin plan" (copy the plan JSON into the editable plan_json widget, so the next runs use exactly
// that plan, edits included) and "unpin" (clear it, plan from the prompt again).
// SJD Sampler node: after a run, shows the sampling statistics.
//
// The server sends these in the node's "ui" output (nodes/plan.py, nodes/sampler.py); nothing here
// is needed for the nodes to work, so an incompatible front end only loses the displays.
import { app } from "../../scripts/app.js";

// The multiline text widget of the classic front end; newer front ends may not ship this module,
// and then the readout falls back to a one-line text widget.
let ComfyWidgets = null;
try {
    ({ ComfyWidgets } = await import("../../scripts/widgets.js"));
} catch (err) {
    console.warn("uni1: scripts/widgets.js not available, using plain text widgets", err);
}

const READOUT = "uni1_readout";

// A read-only multiline text widget, created once per node and updated in place.
function showText(node, text) {
    let widget = node.widgets?.find((w) => w.name === READOUT);
    if (!widget) {
        widget = ComfyWidgets
            ? ComfyWidgets["STRING"](node, READOUT, ["STRING", { multiline: true }], app).widget
            : node.addWidget("text", READOUT, "", () => {}, { serialize: false });
        widget.serialize = false; // a display: never saved into the workflow or sent to the server
        widget.options = { ...(widget.options ?? {}), serialize: false };
        const el = widget.inputEl;
        if (el) {
            el.readOnly = true;
            el.style.opacity = 0.85;
        }
    }
    widget.value = text;
    node.setSize?.([node.size[0], Math.max(node.size[1], node.computeSize()[1])]);
    node.setDirtyCanvas?.(true, true);
}

function first(list) {
    return Array.isArray(list) ? list[0] : list;
}

function setupPlanNode(nodeType) {
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
        onExecuted?.apply(this, arguments);
        const summary = first(message?.uni1_plan_summary);
        if (summary === undefined) return;
        this.uni1PlanJson = first(message.uni1_plan_json) ?? "";
        const conditioning = first(message.uni1_conditioning) ?? "";
        const pinned = this.widgets?.find((w) => w.name === "plan_json")?.value?.trim() ? " (pinned)" : "";
        // a reasoning model planned (nodes/reasoner.py): where the plan came from, then its words
        const report = first(message.uni1_reasoner_report);
        const reasoner = report === undefined ? "" : `\n\nREASONER\n${report}\n\nDETAILED PROMPT\n` +
            `${first(message.uni1_detailed_prompt) ?? ""}\n\nTHINKING\n${first(message.uni1_thinking) || "(none)"}`;
        showText(this, `PLAN${pinned}\n${summary}\n\nCONDITIONING\n${conditioning}${reasoner}`);
    };

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
        onNodeCreated?.apply(this, arguments);
        this.addWidget("button", "pin plan (copy JSON into plan_json)", null, () => {
            const target = this.widgets?.find((w) => w.name === "plan_json");
            if (!target) return;
            if (!this.uni1PlanJson) {
                alert("Run the workflow once: the plan to pin comes from the last run.");
                return;
            }
            target.value = this.uni1PlanJson;
            this.setDirtyCanvas?.(true, true);
        }, { serialize: false });
        this.addWidget("button", "unpin (plan from the prompt)", null, () => {
            const target = this.widgets?.find((w) => w.name === "plan_json");
            if (target) target.value = "";
            this.setDirtyCanvas?.(true, true);
        }, { serialize: false });
    };
}

function setupSamplerNode(nodeType) {
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
        onExecuted?.apply(this, arguments);
        const stats = first(message?.uni1_stats);
        if (stats !== undefined) showText(this, stats);
    };
}

app.registerExtension({
    name: "uni1.nodes",
    async beforeRegisterNodeDef(nodeType, nodeData) {
        if (nodeData.name === "Uni1ReasoningPlan") setupPlanNode(nodeType);
        if (nodeData.name === "Uni1SJDSampler") setupSamplerNode(nodeType);
    },
});
