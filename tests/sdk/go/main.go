// Dapr's Go SDK (github.com/dapr/go-sdk), unchanged, against the sidecar
// named by DAPR_GRPC_PORT (and DAPR_API_TOKEN). Built by scripts/sdks.sh
// and run by tests/tests/dapr_sdks.rs:
//
//	sdkcheck state STORE KEY_PREFIX   saves, reads, deletes and transacts state
//	sdkcheck invoke APP_ID METHOD     POSTs {"from":"go","n":42} to the app's method
//	sdkcheck workflow INPUT -         hosts workflow Greet (two activities and a
//	                                  timer between them) and runs it to the end
//
// Prints one JSON line as its last line: what it read back (values as
// text, a missing key as null), {"go": <the app's answer>}, or the
// workflow's {"status", "output", "failure"}. Exits 1
// with the error on stderr when a call fails. NewClient first dials the
// sidecar and blocks until the gRPC connection is ready
// (DAPR_CLIENT_TIMEOUT_SECONDS): the SDK's only start-up check.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	dapr "github.com/dapr/go-sdk/client"
	"github.com/dapr/go-sdk/workflow"
)

func fail(what string, err error) {
	fmt.Fprintf(os.Stderr, "state: %s: %v\n", what, err)
	os.Exit(1)
}

func main() {
	if len(os.Args) != 4 || (os.Args[1] != "state" && os.Args[1] != "invoke" && os.Args[1] != "workflow") {
		fmt.Fprintln(os.Stderr, "usage: sdkcheck state STORE KEY_PREFIX | sdkcheck invoke APP_ID METHOD | sdkcheck workflow INPUT -")
		os.Exit(2)
	}
	ctx := context.Background()
	c, err := dapr.NewClient()
	if err != nil {
		fail("NewClient", err)
	}
	defer c.Close()
	var out any
	switch os.Args[1] {
	case "state":
		out = state(ctx, c, os.Args[2], os.Args[3])
	case "invoke":
		out = invoke(ctx, c, os.Args[2], os.Args[3])
	default:
		out = runWorkflow(ctx, c, os.Args[2])
	}
	line, _ := json.Marshal(out)
	fmt.Println(string(line))
}

func invoke(ctx context.Context, c dapr.Client, app, method string) any {
	body, _ := json.Marshal(map[string]any{"from": "go", "n": 42})
	content := &dapr.DataContent{ContentType: "application/json", Data: body}
	answer, err := c.InvokeMethodWithContent(ctx, app, method, "post", content)
	if err != nil {
		fail("InvokeMethodWithContent", err)
	}
	var got any
	if err := json.Unmarshal(answer, &got); err != nil {
		fail("the answer is not JSON: "+string(answer), err)
	}
	return map[string]any{"go": got}
}

func state(ctx context.Context, c dapr.Client, store, prefix string) any {
	k := func(n string) string { return prefix + "-go-" + n }
	read := func(key string) any {
		item, err := c.GetState(ctx, store, key, nil)
		if err != nil {
			fail("GetState "+key, err)
		}
		if len(item.Value) == 0 {
			return nil
		}
		return string(item.Value)
	}
	must := func(what string, err error) {
		if err != nil {
			fail(what, err)
		}
	}

	out := map[string]any{}
	must("SaveState k1", c.SaveState(ctx, store, k("k1"), []byte("v1"), nil))
	k2, _ := json.Marshal(map[string]any{"n": 2, "by": "go"})
	must("SaveState k2", c.SaveState(ctx, store, k("k2"), k2, nil))
	out["k1"] = read(k("k1"))
	out["k2"] = read(k("k2"))
	must("DeleteState k1", c.DeleteState(ctx, store, k("k1"), nil))
	out["k1_after_delete"] = read(k("k1"))
	k3, _ := json.Marshal(map[string]any{"tx": "go"})
	ops := []*dapr.StateOperation{
		{Type: dapr.StateOperationTypeUpsert, Item: &dapr.SetStateItem{Key: k("k3"), Value: k3}},
		{Type: dapr.StateOperationTypeDelete, Item: &dapr.SetStateItem{Key: k("k2")}},
	}
	must("ExecuteStateTransaction", c.ExecuteStateTransaction(ctx, store, nil, ops))
	out["k2_after_tx"] = read(k("k2"))
	out["k3_after_tx"] = read(k("k3"))
	return out
}

// Greet says hello twice, with a durable timer between: activities and the
// timer are the workflow engine's work items and reminders, all through
// the sidecar.
func Greet(ctx *workflow.WorkflowContext) (any, error) {
	var name, once, twice string
	if err := ctx.GetInput(&name); err != nil {
		return nil, err
	}
	if err := ctx.CallActivity(Hello, workflow.ActivityInput(name)).Await(&once); err != nil {
		return nil, err
	}
	if err := ctx.CreateTimer(time.Second).Await(nil); err != nil {
		return nil, err
	}
	if err := ctx.CallActivity(Hello, workflow.ActivityInput(once)).Await(&twice); err != nil {
		return nil, err
	}
	return twice, nil
}

// Hello is Greet's activity.
func Hello(ctx workflow.ActivityContext) (any, error) {
	var s string
	if err := ctx.GetInput(&s); err != nil {
		return nil, err
	}
	return "hello " + s, nil
}

func runWorkflow(ctx context.Context, c dapr.Client, input string) any {
	w, err := workflow.NewWorker(workflow.WorkerWithDaprClient(c))
	if err != nil {
		fail("NewWorker", err)
	}
	if err := w.RegisterWorkflow(Greet); err != nil {
		fail("RegisterWorkflow", err)
	}
	if err := w.RegisterActivity(Hello); err != nil {
		fail("RegisterActivity", err)
	}
	if err := w.Start(); err != nil {
		fail("worker Start", err)
	}
	defer w.Shutdown()
	wc, err := workflow.NewClient(workflow.WithDaprClient(c))
	if err != nil {
		fail("workflow NewClient", err)
	}
	id, err := wc.ScheduleNewWorkflow(ctx, "Greet", workflow.WithInput(input))
	if err != nil {
		fail("ScheduleNewWorkflow", err)
	}
	wait, cancel := context.WithTimeout(ctx, 40*time.Second)
	defer cancel()
	md, err := wc.WaitForWorkflowCompletion(wait, id)
	if err != nil {
		fail("WaitForWorkflowCompletion "+id, err)
	}
	failure := ""
	if md.FailureDetails != nil {
		failure = md.FailureDetails.Type + ": " + md.FailureDetails.Message
	}
	return map[string]any{"status": md.RuntimeStatus.String(), "output": md.SerializedOutput, "failure": failure}
}
