"""The page's CSS (cards, summary, banners). Colours come from gradio's theme variables, so the page follows
the theme and dark mode; the heatmap scale is the only fixed palette (it must mean the same everywhere)."""

CSS = """
.vc-legend { display:flex; align-items:center; gap:6px; flex-wrap:wrap; font-size:12px;
  color:var(--body-text-color-subdued); margin:2px 0 8px; }
.vc-legend i { display:inline-block; width:140px; height:10px; border-radius:3px; }
.vc-cards { display:grid; grid-template-columns:repeat(auto-fill, minmax(228px, 1fr)); gap:10px; }
.vc-card { border:1px solid var(--border-color-primary); border-radius:10px; padding:10px;
  background:var(--block-background-fill); display:flex; flex-direction:column; gap:6px; min-width:0; }
.vc-ref { border:2px solid var(--color-accent); }
.vc-failed { border-color:#dc2626; }
.vc-head { display:flex; flex-direction:column; }
.vc-name { font-weight:700; font-size:15px; }
.vc-sub { font-size:11px; color:var(--body-text-color-subdued); }
.vc-maps img { width:100%; image-rendering:pixelated; border-radius:6px; display:block; }
.vc-frames { display:grid; grid-template-columns:repeat(4, 1fr); gap:2px; }
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
.vc-table { border-collapse:collapse; width:100%; font-size:12px; }
.vc-table th, .vc-table td { padding:3px 6px; border-bottom:1px solid var(--border-color-primary); text-align:left; }
.vc-table tr.vc-failed td { color:#b91c1c; }
.vc-plots { display:grid; grid-template-columns:repeat(auto-fit, minmax(320px, 1fr)); gap:16px; margin-top:10px; }
.vc-plot h4 { margin:0 0 6px; font-size:13px; }
.vc-barrow { display:grid; grid-template-columns:110px 1fr 70px; align-items:center; gap:6px; font-size:11px;
  margin:2px 0; }
.vc-barlabel { white-space:pre; overflow:hidden; text-overflow:ellipsis; }
.vc-bar { display:flex; height:12px; background:var(--background-fill-secondary); border-radius:3px; overflow:hidden; }
.vc-bar span { height:100%; }
.vc-barval { text-align:right; }
.vc-keys { display:flex; gap:10px; font-size:11px; margin-top:4px; }
.vc-keys i { display:inline-block; width:10px; height:10px; margin-right:3px; border-radius:2px; }
.vc-how { font-size:11px; color:var(--body-text-color-subdued); margin-top:10px; }
.vc-how p { margin:2px 0; }
.vc-header { display:flex; justify-content:space-between; align-items:flex-end; flex-wrap:wrap; gap:8px; }
.vc-header h1 { margin:0; font-size:24px; }
.vc-chips span { background:var(--background-fill-secondary); border-radius:12px; padding:2px 10px; margin-left:6px;
  font-size:12px; }
"""
