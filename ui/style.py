"""The page's CSS (cards, summary, banners). Colours come from gradio's theme variables, so the page follows
the theme and dark mode; the heatmap scale is the only fixed palette (it must mean the same everywhere)."""

CSS = """
.vc-legend { display:flex; align-items:center; gap:6px; flex-wrap:wrap; font-size:12px;
  color:var(--body-text-color-subdued); margin:2px 0 8px; }
.vc-legend i { display:inline-block; width:140px; height:10px; border-radius:3px; }
/* auto-fit: a comparison's cards share one row while each can be 185 px wide (4 on a 1280 px laptop) */
.vc-cards { display:grid; grid-template-columns:repeat(auto-fit, minmax(185px, 1fr)); gap:10px; }
.vc-card { border:1px solid var(--border-color-primary); border-radius:10px; padding:10px;
  background:var(--block-background-fill); display:flex; flex-direction:column; gap:6px; min-width:0; }
.vc-ref { border:2px solid var(--color-accent); }
.vc-failed { border-color:#dc2626; }
.vc-head { display:flex; flex-direction:column; }
.vc-name { font-weight:700; font-size:15px; }
.vc-sub { font-size:11px; color:var(--body-text-color-subdued); }
.vc-maps img { width:100%; image-rendering:pixelated; border-radius:6px; display:block; }
.vc-frames { display:grid; grid-template-columns:repeat(2, 1fr); gap:3px; }
/* click (focus) a map to see it large; click elsewhere to put it back */
.vc-maps img { cursor:zoom-in; }
.vc-maps img:focus { position:fixed; z-index:1000; top:5vh; left:50%; transform:translateX(-50%); width:auto;
  height:90vh; max-width:95vw; object-fit:contain; background:#000; cursor:zoom-out; outline:4px solid #fff;
  box-shadow:0 0 0 100vmax rgba(0, 0, 0, 0.7); }
.vc-maplabel { font-size:11px; color:var(--body-text-color-subdued); }
.vc-layers .vc-strip { display:flex; gap:1px; height:14px; }
.vc-layer { flex:1; border-radius:2px; font-size:9px; line-height:14px; text-align:center; color:#fff; }
.vc-frozen { outline:2px solid #dc2626; outline-offset:-2px; }
.vc-answer { background:var(--background-fill-secondary); border-radius:6px; padding:6px 8px; font-size:14px;
  min-height:2.2em; overflow-wrap:anywhere; }
.vc-answer.vc-differs { background:rgba(239, 68, 68, 0.14); }
.vc-agree { font-size:11px; color:#15803d; }
.vc-agree.vc-differs { color:#b91c1c; }
.vc-nums { display:grid; grid-template-columns:1fr 1fr; gap:4px; }
.vc-num { background:var(--background-fill-secondary); border-radius:6px; padding:3px 6px; }
.vc-num span { display:block; font-size:10px; color:var(--body-text-color-subdued); }
.vc-num b { font-size:13px; }
.vc-good b { color:#15803d; } .vc-bad b { color:#b91c1c; }
.vc-foot { font-size:10px; color:var(--body-text-color-subdued); }
.vc-pending { font-size:13px; color:#b45309; padding:6px 0; }
.vc-wait .vc-maps img { opacity:0.35; }
.vc-error { background:rgba(239, 68, 68, 0.12); color:#b91c1c; border-radius:6px; padding:6px 8px;
  font-size:13px; overflow-wrap:anywhere; }
.vc-note { background:rgba(234, 179, 8, 0.15); border-radius:6px; padding:6px 10px; font-size:13px; margin-top:4px; }
.vc-status { font-size:13px; }
.vc-summary h3 { margin:4px 0 6px; }
.vc-scroll { overflow-x:auto; max-width:100%; }
.vc-table { border-collapse:collapse; width:100%; font-size:12px; }
.vc-table th { white-space:nowrap; }
.vc-table th, .vc-table td { padding:3px 6px; border-bottom:1px solid var(--border-color-primary); text-align:left; }
.vc-table tr.vc-failed td { color:#b91c1c; }
.vc-how { font-size:11px; color:var(--body-text-color-subdued); margin-top:10px; }
.vc-how p { margin:2px 0; }
.vc-header { display:flex; justify-content:space-between; align-items:center; flex-wrap:wrap; gap:8px; }
.vc-header h1 { margin:0; font-size:20px; }
.vc-chips span { background:var(--background-fill-secondary); border-radius:12px; padding:2px 10px; margin-left:6px;
  font-size:12px; }
.vc-ood { background:rgba(234, 179, 8, 0.18); border-left:3px solid #b45309; border-radius:4px; padding:4px 6px;
  font-size:11px; }
.vc-recent { margin:0; padding-left:18px; font-size:13px; } .vc-recent span { color:var(--body-text-color-subdued); }
/* the controls column: compact, so question, methods and Compare fit a 800 px high window */
#vc-controls { gap:4px; }
#vc-controls .form { gap:0; }
#vc-controls .block { padding:4px 8px; }
#vc-controls fieldset label { padding:1px 5px; font-size:12px; margin:0; }
#vc-controls fieldset .wrap { gap:3px; }
#vc-controls .block-title, #vc-controls label > span[data-testid="block-info"] { margin-bottom:2px; font-size:12px; }
#vc-controls textarea { padding:4px 8px; }
#vc-controls .tab-container, #vc-results .tab-container { height:34px; }
.vc-header { padding:0 4px; } .vc-header h1 { font-size:18px; }
/* examples in the main area: a compact list with small thumbnails */
#vc-results .container.table { width:44px; height:44px; }
#vc-results table td { padding:2px 8px; }
/* presenter view: cards only, large type */
.vc-present .vc-cards { grid-template-columns:repeat(auto-fit, minmax(300px, 1fr)); gap:18px; }
.vc-present .vc-name { font-size:28px; } .vc-present .vc-sub { font-size:16px; }
.vc-present .vc-answer { font-size:26px; } .vc-present .vc-num b { font-size:22px; }
.vc-present .vc-num span, .vc-present .vc-agree, .vc-present .vc-foot, .vc-present .vc-maplabel { font-size:15px; }
.vc-present .vc-status { font-size:18px; }
"""
